"""Change notifications: the session events that record which channels a
transaction changed, and publish them once after the outermost commit.

A flush records the tables of the objects it wrote (and of changed
many-to-many link tables), bulk ORM statements record their table; each
savepoint keeps its own set until it is released (merged into its parent)
or rolled back (dropped). After the root transaction commits, the manager's
``notifier`` (default ``sbio.live.notify(channels, trigger="commit")``) is called
once with the sorted channels. :mod:`sbio.sa.session` attaches these handlers
to :class:`~sbio.sa.SbioSession`.
"""
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

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


def _manager_of(session: Session) -> Any:
    """The session's :class:`~sbio.sa.SessionManager` subclass (``Any``: that
    module imports this one), or None."""
    return getattr(type(session), "_sbio_manager", None)


def _wants_notifications(session: Session) -> bool:
    manager = _manager_of(session)
    return manager is not None and bool(manager.notify_changes)


def _boundary(session: Session) -> SessionTransaction | None:
    """Key of the transaction changes are recorded in: innermost savepoint, else None (the root)."""
    return session.get_nested_transaction()


def _record(session: Session, channels: Iterable[str]) -> None:
    if not channels:
        return
    changes = session.info.setdefault(_CHANGES_KEY, {})
    changes.setdefault(_boundary(session), set()).update(channels)


def _on_after_flush(session: Session, flush_context: "UOWTransaction") -> None:
    if not _wants_notifications(session):
        return
    channels = set()
    for state, (isdelete, listonly) in flush_context.states.items():
        if listonly:
            continue
        obj = state.obj()
        if obj is None:
            continue
        if not (isdelete or state.key is None or session.is_modified(obj)):
            continue
        mapper = state.mapper
        for table in mapper.tables:
            channels.add(table.name)
        for rel in mapper.relationships:
            if (
                rel.secondary is not None
                and getattr(rel.secondary, "name", None)
                and (isdelete or state.attrs[rel.key].history.has_changes())
            ):
                channels.add(rel.secondary.name)
    _record(session, channels)


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
        _record(session, {name})


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
            changes.setdefault(parent, set()).update(done)
        return
    channels: set[str] = set().union(*changes.values())
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
