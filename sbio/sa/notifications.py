"""Change notifications: the session events that record which channels a
transaction changed, and publish them once after the outermost commit.

A flush records the tables of the objects it wrote (and of changed
many-to-many link tables), the row channel of each of those objects
(``"poll:17"``, :func:`sbio.channels.row_channel`) and of the parents its
class names in ``__notify_parents__``; bulk ORM statements record their
table and ``"table:*"`` (every row). More than the manager's
``max_row_channels`` rows of one table in one transaction are recorded as
``"table:*"`` too. Each savepoint keeps its own record until it is released
(merged into its parent) or rolled back (dropped). After the root transaction commits, the manager's
``notifier`` (default ``sbio.live.notify(channels, trigger="commit")``) is called
once with the sorted channels. :mod:`sbio.sa.session` attaches these handlers
to :class:`~sbio.sa.SbioSession`.
"""
import logging
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import (
    ColumnProperty,
    InstanceState,
    Mapper,
    ORMExecuteState,
    RelationshipProperty,
    Session,
    SessionTransaction,
)
from sqlalchemy.orm.interfaces import MANYTOONE

from sbio.channels import row_channel, row_wildcard

if TYPE_CHECKING:
    from sqlalchemy.orm.unitofwork import UOWTransaction

log = logging.getLogger("sbio.sa")  # one logger for the whole package, as documented


def _live_notifier(channels: list[str]) -> None:
    """Default notifier: ``sbio.live.notify(channels, trigger="commit")``.

    So a commit notifies like :func:`sbio.live.notify` does from where the
    commit runs: in a handler, that handler's server; in a task, the
    server(s) running its lifecycle; anywhere else, every running server.
    """
    try:
        from sbio.live import notify
    except ImportError as e:
        if e.name in ("sbio.live", "sbio"):
            log.debug("sbio.live is not available; change notification %s dropped", channels)
            return
        raise
    notify(channels, trigger="commit")


_CHANGES_KEY = "_sbio_changes"
#: ``SessionManager.max_row_channels`` when a manager does not say.
DEFAULT_MAX_ROW_CHANNELS = 1000


class _Changes:
    """The channels one transaction (or savepoint) changed: names, and rows per table."""

    __slots__ = ("names", "rows")

    def __init__(self) -> None:
        self.names: set[str] = set()
        #: table channel -> set of row channels, or None: too many rows, ``table:*``
        self.rows: dict[str, set[str] | None] = {}

    def add_rows(self, table: str, channels: Iterable[str], limit: int) -> None:
        if table in self.rows:
            rows = self.rows[table]
            if rows is None:
                return
        else:
            rows = self.rows[table] = set()
        rows.update(channels)
        if len(rows) > limit:
            self.rows[table] = None
            log.debug("more than %d changed rows of %r in one transaction: notifying %r",
                      limit, table, row_wildcard(table))

    def wildcard(self, table: str) -> None:
        self.rows[table] = None

    def merge(self, other: "_Changes", limit: int) -> None:
        self.names |= other.names
        for table, rows in other.rows.items():
            if rows is None:
                self.wildcard(table)
            else:
                self.add_rows(table, rows, limit)

    def channels(self) -> set[str]:
        channels = set(self.names)
        for table, rows in self.rows.items():
            channels.update((row_wildcard(table),) if rows is None else rows)
        return channels


# -- which rows a flushed object names ------------------------------------------------------


class _RowSpec:
    """What the row channels of one mapped class are made of (computed once per mapper)."""

    __slots__ = ("tables", "pk_keys", "parents", "rows")

    def __init__(self, mapper: Mapper[Any]) -> None:
        cls = mapper.class_
        self.tables = tuple(dict.fromkeys(table.name for table in mapper.tables))
        self.pk_keys = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        self.rows = bool(getattr(cls, "__notify_rows__", True))
        #: (attribute key, parent table channel) of each ``__notify_parents__`` entry
        self.parents: tuple[tuple[str, str], ...] = tuple(_parent(mapper, name)
                             for name in _names(cls, getattr(cls, "__notify_parents__", ())))


def _names(cls: type, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        names = tuple(value)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{cls.__name__}.__notify_parents__ must be a tuple of attribute "
                        f"names, got {value!r}")
    return names


def _parent(mapper: Mapper[Any], name: str) -> tuple[str, str]:
    """``(foreign-key attribute key, parent table)`` of one ``__notify_parents__`` name."""
    cls = mapper.class_
    where = f"{cls.__name__}.__notify_parents__: {name!r}"
    prop = mapper.attrs.get(name)
    if prop is None:
        raise ValueError(f"{where} is not an attribute of {cls.__name__}")
    if isinstance(prop, RelationshipProperty):
        if prop.direction is not MANYTOONE or len(prop.local_columns) != 1:
            raise ValueError(f"{where} must be a many-to-one relationship over one "
                             f"foreign-key column (or that column's attribute)")
        (column,) = prop.local_columns
    elif isinstance(prop, ColumnProperty) and len(prop.columns) == 1:
        column = prop.columns[0]
    else:
        raise ValueError(f"{where} must name a foreign-key column or a many-to-one relationship")
    fks = list(getattr(column, "foreign_keys", ()))
    if len(fks) != 1:
        raise ValueError(f"{where}: column {column.name!r} must have exactly one foreign key "
                         f"(it has {len(fks)})")
    target = fks[0].column
    parent = target.table
    if not target.primary_key or len(parent.primary_key.columns) != 1:
        raise ValueError(f"{where}: the foreign key must reference the one-column primary "
                         f"key of {parent.name!r}, whose rows are named "
                         f"'{parent.name}:<primary key>'")
    return mapper.get_property_by_column(column).key, parent.name


# mapper -> _RowSpec: derived from the class alone, like a cache on it
_specs: "weakref.WeakKeyDictionary[Any, _RowSpec]" = weakref.WeakKeyDictionary()


def row_spec(mapper: Mapper[Any]) -> _RowSpec:
    """The :class:`_RowSpec` of *mapper* (checks ``__notify_parents__``; raises if wrong)."""
    spec = _specs.get(mapper)
    if spec is None:
        spec = _specs[mapper] = _RowSpec(mapper)
    return spec


def _row_keys(state: InstanceState[Any], spec: _RowSpec) -> list[tuple[Any, ...]]:
    """The primary keys *state* names: its identity, and its current key if that differs."""
    keys: list[tuple[Any, ...]] = []
    if state.key is not None:
        keys.append(tuple(state.key[1]))
    current = tuple(state.dict.get(key) for key in spec.pk_keys)
    if None not in current and current not in keys:
        keys.append(current)
    return keys


def _record_object(session: Session, changes: _Changes, state: InstanceState[Any],
                   isdelete: bool, limit: int) -> None:
    mapper = state.mapper
    spec = row_spec(mapper)
    changes.names.update(spec.tables)
    if spec.rows:
        keys = _row_keys(state, spec)
        for table in spec.tables:
            if keys:
                changes.add_rows(table, [row_channel(table, key) for key in keys], limit)
            else:  # no key to be seen (an odd mapping): every row of the table
                changes.wildcard(table)
    for key, parent in spec.parents:
        if state.key is not None and key not in state.dict:
            # a persistent row whose foreign key is not loaded (deferred, expired):
            # which parent it has is not known, so every row of the parent table
            changes.wildcard(parent)
            continue
        history = state.attrs[key].history  # passive: loads nothing
        values = [v for v in (*history.added, *history.unchanged, *history.deleted)
                  if v is not None]
        if values:
            changes.add_rows(parent, [row_channel(parent, v) for v in values], limit)
    for rel in mapper.relationships:
        link = getattr(rel.secondary, "name", None)  # None: no link table (or not a Table)
        if link and (isdelete or state.attrs[rel.key].history.has_changes()):
            changes.names.add(link)


def _manager_of(session: Session) -> Any:
    """The session's :class:`~sbio.sa.SessionManager` subclass (``Any``: that
    module imports this one), or None."""
    return getattr(type(session), "_sbio_manager", None)


def _wants_notifications(session: Session) -> bool:
    manager = _manager_of(session)
    return manager is not None and bool(manager.notify_changes)


def _row_limit(session: Session) -> int:
    manager = _manager_of(session)
    return int(getattr(manager, "max_row_channels", DEFAULT_MAX_ROW_CHANNELS))


def _boundary(session: Session) -> SessionTransaction | None:
    """Key of the transaction changes are recorded in: innermost savepoint, else None (the root)."""
    return session.get_nested_transaction()


def _changes(session: Session) -> _Changes:
    changes: dict[SessionTransaction | None, _Changes] = session.info.setdefault(_CHANGES_KEY, {})
    boundary = _boundary(session)
    current = changes.get(boundary)
    if current is None:
        current = changes[boundary] = _Changes()
    return current


def _record(session: Session, channels: Iterable[str]) -> None:
    """Record channel *names* (``notify_on_commit``) for the next commit."""
    if channels:
        _changes(session).names.update(channels)


def _on_after_flush(session: Session, flush_context: "UOWTransaction") -> None:
    if not _wants_notifications(session):
        return
    changes = None
    limit = _row_limit(session)
    for state, (isdelete, listonly) in flush_context.states.items():
        if listonly:
            continue
        obj = state.obj()
        if obj is None:
            continue
        if not (isdelete or state.key is None or session.is_modified(obj)):
            continue
        if changes is None:
            changes = _changes(session)
        _record_object(session, changes, state, isdelete, limit)


def _on_do_orm_execute(orm_execute_state: ORMExecuteState) -> None:
    """Bulk ``update()`` / ``delete()`` / ``insert()`` through the session count as changes."""
    state = orm_execute_state
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    session = orm_execute_state.session
    if not _wants_notifications(session):
        return
    table = getattr(orm_execute_state.statement, "table", None)
    name = getattr(table, "name", None)
    if name:
        changes = _changes(session)
        changes.names.add(name)
        changes.wildcard(name)  # which rows it touched is not known: all of them


def _on_after_commit(session: Session) -> None:
    changes = session.info.get(_CHANGES_KEY)
    if not changes:
        return
    nested = session.get_nested_transaction()
    if nested is not None:
        # a savepoint was released: its changes now belong to the enclosing transaction
        done = changes.pop(nested, None)
        if done:
            parent = nested.parent
            while parent is not None and not parent.nested:
                parent = parent.parent
            into = changes.get(parent)
            if into is None:
                changes[parent] = done
            else:
                into.merge(done, _row_limit(session))
        return
    channels: set[str] = set().union(*(c.channels() for c in changes.values()))
    changes.clear()
    manager = _manager_of(session)
    if not channels or manager is None or not manager.notify_changes:
        return
    notifier = manager.notifier or _live_notifier
    try:
        notifier(sorted(channels))
    except Exception:
        log.exception("change notification for %s failed (the commit stands)", sorted(channels))


def _on_after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    changes = session.info.get(_CHANGES_KEY)
    if not changes:
        return
    if previous_transaction.nested:
        changes.pop(previous_transaction, None)
    elif previous_transaction.parent is None:
        changes.clear()


def _on_after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CHANGES_KEY, None)
