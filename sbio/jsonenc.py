"""Python values on the wire: how a :class:`~sbio.Server` turns them into JSON.

Every value a server sends (an ack's data, ``emit`` / ``broadcast`` / ``call``
arguments, ``sbio:update`` pushes, emits relayed through Redis to the other
processes of a cluster) is encoded by that server's :class:`JSONProvider`
(``server.json``, as ``app.json`` is a Flask app's). Besides what JSON has, it
encodes (``docs/protocol.md``, "Values on the wire"):

=========================================  =============================================
``datetime``, ``date``, ``time``           ISO 8601 text (``isoformat()``), offset kept
``timedelta``                              seconds, a number (as ``sbio.sa`` has them)
``uuid.UUID``                              ``"12345678-1234-5678-1234-567812345678"``
``decimal.Decimal``                        its text, ``"12.50"``: a string, never a
                                           float, so no digit is lost
``enum.Enum``                              its ``value``
dataclass instances                        an object of their fields, in field order
``set``, ``frozenset``                     a list, sorted when the items can be sorted
``tuple``                                  a list (as JSON always did)
=========================================  =============================================

Other types are added with :func:`register_json_type` (every server of the
process) or :meth:`sbio.Server.register_json_type` (one server). The nearest
class on a value's MRO that has a conversion decides; at one class, the
server's registration beats the process-wide one, which beats the built-in.

It is the standard library's C encoder with a ``default`` hook, so values
JSON has natively cost what they cost before; only the types above go
through Python. Inbound text is not decoded here but by the strict decoder
of :class:`sbio.limits.StrictJSON`.
"""
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["JSONProvider", "JSONTypes", "register_json_type", "process_types"]

#: What a conversion is: one value in, a JSON-able value out.
Converter = Callable[[Any], Any]

# The C encoder writes these (and their subclasses) itself and never asks a
# default hook about them: a conversion registered for one would never run.
_NATIVE = (str, int, float, list, dict, tuple, type(None))
# bytes travel as socket.io binary attachments, found by python-socketio
# before the JSON encoder runs.
_BINARY = (bytes, bytearray, memoryview)


def _isoformat(value: Any) -> str:
    return value.isoformat()


def _seconds(value: datetime.timedelta) -> float:
    return value.total_seconds()


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _set_items(value: Any) -> list[Any]:
    # Sorted, so that one set gives one text whatever its history (a set's
    # iteration order depends on insertions and hash seeds): the live-data
    # broadcaster compares texts to tell whether a result changed.
    try:
        return sorted(value)
    except TypeError:  # items that do not compare (mixed types, dicts...)
        return list(value)


#: sbio's built-in conversions, by class (dataclasses are recognised by their fields).
_BUILTIN: dict[type, Converter] = {
    datetime.datetime: _isoformat,
    datetime.date: _isoformat,
    datetime.time: _isoformat,
    datetime.timedelta: _seconds,
    uuid.UUID: str,
    decimal.Decimal: str,
    enum.Enum: _enum_value,
    set: _set_items,
    frozenset: _set_items,
}


def _dataclass_converter(cls: type) -> Converter:
    names = tuple(field.name for field in dataclasses.fields(cls))

    def fields_of(value: Any) -> dict[str, Any]:
        return {name: getattr(value, name) for name in names}

    return fields_of


def _name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class JSONTypes:
    """Conversions registered for types: class -> ``fn(value) -> JSON-able value``.

    :param parent: a registry consulted after this one, at each class of a
        value's MRO (a server's types have :func:`process_types` as parent).
    """

    __slots__ = ("_by_class", "_dependents", "parent", "__weakref__")

    def __init__(self, parent: "JSONTypes | None" = None) -> None:
        self._by_class: dict[type, Converter] = {}
        # providers (and child registries) whose caches a registration here
        # makes stale: told at once, so that encoding never checks
        self._dependents: weakref.WeakSet[Any] = weakref.WeakSet()
        self.parent = parent
        if parent is not None:
            parent.watch(self)

    def register(self, cls: type, fn: Converter) -> None:
        """Encode instances of *cls* (and its subclasses) as ``fn(value)``.

        *fn* returns a value JSON has or one the encoder knows (it may hold
        datetimes, other registered types...). A second registration of one
        class replaces the first.

        :raises TypeError: *cls* is not a class, *fn* not callable, or *cls*
            is one the JSON encoder writes by itself (``str``, ``int``,
            ``float``, ``list``, ``dict``, ``tuple``, ``None`` and their
            subclasses) or ``bytes`` (sent as binary attachments).
        """
        if not isinstance(cls, type):
            raise TypeError(f"register_json_type: {cls!r} is not a class")
        if not callable(fn):
            raise TypeError(f"register_json_type({cls.__qualname__}, ...): {fn!r} is not callable")
        if issubclass(cls, _NATIVE) or issubclass(cls, _BINARY):
            kind = next(base for base in (*_NATIVE, *_BINARY) if issubclass(cls, base))
            raise TypeError(
                f"register_json_type({cls.__qualname__}, ...): instances of {kind.__name__}"
                + (" travel as binary attachments" if kind in _BINARY else
                   " and its subclasses are written by the JSON encoder itself")
                + "; a conversion for them would never run: convert such values before "
                "sending them")
        self._by_class[cls] = fn
        self.changed()

    def get(self, cls: type) -> Converter | None:
        """The conversion registered for exactly *cls* (here, else in the parent)."""
        fn = self._by_class.get(cls)
        if fn is None and self.parent is not None:
            return self.parent.get(cls)
        return fn

    def watch(self, dependent: Any) -> None:
        """Call ``dependent.changed()`` whenever this registry (or a parent) gains a
        registration; held weakly."""
        self._dependents.add(dependent)

    def changed(self) -> None:
        """Tell the dependents that a registration was added."""
        for dependent in list(self._dependents):
            dependent.changed()

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and self.get(cls) is not None

    def __repr__(self) -> str:
        names = ", ".join(sorted(cls.__qualname__ for cls in self._by_class))
        return f"<JSONTypes [{names}]{' + parent' if self.parent is not None else ''}>"


_PROCESS_TYPES = JSONTypes()


def process_types() -> JSONTypes:
    """The process-wide registry :func:`register_json_type` adds to.

    Every :class:`JSONProvider` made without ``types=`` falls back to it.
    """
    return _PROCESS_TYPES


def register_json_type(cls: type, fn: Converter) -> None:
    """Encode instances of *cls* as ``fn(value)``, for every :class:`~sbio.Server` of the process.

    ::

        sbio.register_json_type(Money, lambda m: {"amount": str(m.amount), "currency": m.code})

    Meant for the module that defines the type, at import time, as a
    ``DaemonTask`` declares itself for every server: a registration is
    configuration, not per-connection state. A server's own
    :meth:`sbio.Server.register_json_type` wins over it for that server
    alone. *fn* returns a JSON-able value (which may hold datetimes, other
    registered types...). See :meth:`JSONTypes.register` for what is refused.
    """
    _PROCESS_TYPES.register(cls, fn)


class JSONProvider:
    """How one server writes JSON: ``server.json`` (compare Flask's ``app.json``).

    :param types: the registry of conversions; by default a new one of this
        provider's own, falling back to the process-wide :func:`process_types`.

    ``dumps`` / ``loads`` have the json module's shape, so the provider is
    what python-socketio's client manager uses for the messages processes
    exchange through Redis (``loads`` there reads text of sbio processes, not
    of clients: clients' text goes through :class:`sbio.limits.StrictJSON`).
    NaN and Infinity are refused (``ValueError``), as in JSON.parse they are
    errors; a value nothing can encode raises ``TypeError`` naming its type.
    """

    def __init__(self, types: JSONTypes | None = None) -> None:
        self.types = JSONTypes(parent=_PROCESS_TYPES) if types is None else types
        #: class -> its conversion (None: none); cleared by changed()
        self._cache: dict[type, Converter | None] = {}
        self.types.watch(self)
        self._compact = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                         default=self.default)
        self._sorted = json.JSONEncoder(separators=(",", ":"), allow_nan=False,
                                        sort_keys=True, default=self.default)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.types!r}>"

    def changed(self) -> None:
        """Forget the conversions looked up so far (a registration was added)."""
        self._cache = {}

    def register_type(self, cls: type, fn: Converter) -> None:
        """Encode instances of *cls* as ``fn(value)`` with this provider.

        See :meth:`JSONTypes.register`.
        """
        self.types.register(cls, fn)

    # -- encoding ----------------------------------------------------------------------

    def converter(self, cls: type) -> Converter | None:
        """The conversion for instances of *cls*, or None: the nearest class on its MRO that
        has one wins; at one class, a registration beats sbio's built-in."""
        try:
            return self._cache[cls]
        except KeyError:
            pass
        found: Converter | None = None
        for klass in cls.__mro__:
            found = self.types.get(klass) or _BUILTIN.get(klass)
            if found is None and "__dataclass_fields__" in klass.__dict__:
                found = _dataclass_converter(klass)
            if found is not None:
                break
        self._cache[cls] = found  # bounded by the classes of the program
        return found

    def default(self, value: Any) -> Any:
        """The JSON-able stand-in for *value* (the encoders' ``default`` hook).

        :raises TypeError: no conversion for ``type(value)`` (the message
            names the type and how to register one), or the conversion
            raised (chained), so that every sender treats both alike: a
            value that cannot be sent.
        """
        cls = type(value)
        try:
            fn = self._cache[cls]
        except KeyError:
            fn = self.converter(cls)
        if fn is None:
            raise TypeError(
                f"Object of type {_name(cls)} is not JSON serializable: convert it before "
                f"sending it, or register a conversion with sbio.register_json_type("
                f"{cls.__qualname__}, fn) or server.register_json_type(...)")
        try:
            return fn(value)
        except Exception as exc:
            raise TypeError(f"the JSON conversion of {_name(cls)} "
                            f"({getattr(fn, '__qualname__', fn)}) raised {exc!r}") from exc

    def dumps(self, value: Any, **kwargs: Any) -> str:
        """Compact JSON text of *value* (``separators=(",", ":")``, NaN refused).

        Keyword arguments of :func:`json.dumps` are taken (``sort_keys``,
        ``separators``...) for the json module's shape; without them the
        encoder made once is used.
        """
        if not kwargs or kwargs == _COMPACT:
            return self._compact.encode(value)
        if kwargs == _SORTED:
            return self._sorted.encode(value)
        kwargs.setdefault("separators", (",", ":"))
        kwargs["allow_nan"] = False
        kwargs["default"] = self.default
        return json.dumps(value, **kwargs)

    def canonical(self, value: Any) -> str:
        """The canonical text of *value*: compact, keys sorted (insertion order when keys
        of mixed types cannot be sorted). The live-data broadcaster sends it and compares
        it with the last one a subscriber got."""
        try:
            return self._sorted.encode(value)
        except TypeError:
            # keys of mixed types cannot be sorted; anything else fails again here
            return self._compact.encode(value)

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        """``json.loads`` (for trusted text, e.g. other sbio processes' messages)."""
        return json.loads(text, **kwargs)


_COMPACT = {"separators": (",", ":")}
_SORTED = {"separators": (",", ":"), "sort_keys": True}
