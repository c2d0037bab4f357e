"""Channel names of live data: the one rule for sbio.live, sbio.sa and notify_remote.

A channel is a string. Code may name one by a string, by a class (an
SQLAlchemy model: its table) or by an instance of a mapped model; every
module turns those into the string with :func:`channel_name`, so a commit
(sbio.sa), a ``notify()`` and a ``notify_remote()`` of the same model reach
the same subscriptions. Pure functions, no imports of sbio.
"""
import re
from typing import Any

__all__ = ["channel_name", "channel_names", "model_channel", "snake_case", "row_channel",
           "row_wildcard", "wildcard_prefix", "ROW_SEPARATOR", "WILDCARD"]

#: Between a table's channel and a row's key, and between the values of a composite key.
ROW_SEPARATOR = ":"
#: The key of :func:`row_wildcard`: ``"poll:*"`` stands for every row channel of ``poll``.
WILDCARD = "*"
_WILDCARD_SUFFIX = ROW_SEPARATOR + WILDCARD

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``"WebsiteURL"`` -> ``"website_url"``, ``"HTTPRequest"`` -> ``"http_request"``."""
    return _CAMEL_RE.sub("_", name).lower()


def _table_name(cls: type) -> str | None:
    """``__table__.name``, else ``__tablename__``, else None."""
    table = getattr(cls, "__table__", None)
    return getattr(table, "name", None) or getattr(cls, "__tablename__", None) or None


def model_channel(model: object) -> str:
    """The channel of a mapped model class or instance: its table's name.

    Equal to ``__tablename__`` for ordinary models; a single-table-inheritance
    subclass shares its parent's table and therefore its parent's channel.

    :raises TypeError: *model* is not a mapped model.
    """
    cls = model if isinstance(model, type) else type(model)
    name = _table_name(cls)
    if not name:
        raise TypeError(f"{cls!r} is not a mapped model")
    return name


def channel_name(obj: object) -> str:
    """The channel name of *obj*.

    A string is a channel name as it is. A class (for instance an SQLAlchemy
    model) is named by its table: ``__table__.name``, else ``__tablename__``,
    else its name in snake_case (``WebsiteURL`` -> ``"website_url"``). An
    instance of a mapped model is named like its class.

    :raises TypeError: for anything else.
    :raises ValueError: for an empty name.
    """
    if isinstance(obj, str):
        name = obj
    else:
        cls = obj if isinstance(obj, type) else type(obj)
        if not isinstance(obj, type) and getattr(cls, "__table__", None) is None \
                and not getattr(cls, "__tablename__", None):
            raise TypeError(f"a channel must be a string or a class, got {obj!r}")
        name = _table_name(cls) or snake_case(cls.__name__)
        if not isinstance(name, str):
            raise TypeError(f"cannot name a channel after {obj!r}")
    if not name:
        raise ValueError("a channel name cannot be empty")
    return name


def channel_names(channels: Any) -> tuple[str, ...]:
    """A tuple of distinct channel names from one channel or an iterable of them."""
    if isinstance(channels, (str, type)):
        return (channel_name(channels),)
    try:
        items = iter(channels)
    except TypeError:
        return (channel_name(channels),)
    return tuple(dict.fromkeys(channel_name(c) for c in items))


def _key_values(obj: object) -> tuple[Any, ...]:
    """The primary key of a mapped instance (its identity, else its current values)."""
    from sqlalchemy import inspect as sa_inspect  # lazily: sbio.channels needs no SQLAlchemy

    state = sa_inspect(obj)
    if state.identity is not None:
        return tuple(state.identity)
    mapper = state.mapper
    return tuple(mapper.primary_key_from_instance(obj))


def row_channel(table: object, key: Any = None) -> str:
    """The channel of one row: ``"poll:17"``.

    :param table: the table's channel: a string, a model class, or a mapped
        instance; for an instance *key* may be left out (its primary key).
    :param key: the primary-key value; a tuple for a composite key, whose
        values are joined with ``:`` in primary-key column order
        (``row_channel(Vote, (17, "ann")) == "vote:17:ann"``). Each value is
        written with ``str()``: a UUID in its hyphenated form, an integer in
        decimal, so ``"poll:{poll_id}"`` formatted with the id a client sends
        (a string or a number) gives the same name.

    :raises ValueError: no key, or a key value that is None.
    """
    if key is None:
        if isinstance(table, (str, type)):
            raise ValueError(f"row_channel({table!r}): the row's key is missing")
        key = _key_values(table)
    values = key if isinstance(key, tuple) else (key,)
    if not values or any(v is None for v in values):
        raise ValueError(f"row_channel({table!r}, {key!r}): a row's key cannot be None or empty")
    return channel_name(table) + ROW_SEPARATOR + ROW_SEPARATOR.join(map(str, values))


def row_wildcard(table: object) -> str:
    """``"poll:*"``: notifying it re-runs every subscription on a channel starting with ``poll:``.

    sbio.sa names it for the changes whose rows it cannot tell (bulk
    statements, more changed rows than ``SessionManager.max_row_channels``).
    """
    return channel_name(table) + _WILDCARD_SUFFIX


def wildcard_prefix(channel: str) -> str | None:
    """``"poll:"`` for the wildcard ``"poll:*"``, None for any other channel."""
    if channel.endswith(_WILDCARD_SUFFIX) and len(channel) > len(_WILDCARD_SUFFIX):
        return channel[:-1]
    return None
