""":class:`SessionManager` (one subclass per database) and the :class:`SbioSession` it hands out."""
from types import TracebackType
from typing import Any, ClassVar, Literal

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.orm import sessionmaker

from sbio.channels import model_channel

from .base import _bases, _bases_lock
from .notifications import (
    DEFAULT_MAX_ROW_CHANNELS,
    _manager_of,
    _on_after_commit,
    _on_after_flush,
    _on_after_soft_rollback,
    _on_after_transaction_end,
    _on_do_orm_execute,
    _record,
)


class SbioSession(_SASession):
    """The session class a :class:`SessionManager` hands out (plus its ``SessionMixin``)."""

    #: the SessionManager subclass this session belongs to
    _sbio_manager = None

    def notify_on_commit(self, *channels: str | type) -> None:
        """Also notify these channels (strings or model classes) after the
        next successful commit, e.g. after changing rows with raw SQL."""
        names: set[str] = set()
        for channel in channels:
            names.add(channel if isinstance(channel, str) else model_channel(channel))
        if _manager_of(self) is None or _manager_of(self).notify_changes:
            _record(self, names)


event.listen(SbioSession, "after_flush", _on_after_flush)
event.listen(SbioSession, "do_orm_execute", _on_do_orm_execute)
event.listen(SbioSession, "after_commit", _on_after_commit)
event.listen(SbioSession, "after_soft_rollback", _on_after_soft_rollback)
event.listen(SbioSession, "after_transaction_end", _on_after_transaction_end)


class SessionManager:
    """Subclass it once per database::

        class Session(SessionManager):
            engine = create_engine(config["db.url"])

            class SessionMixin:                 # optional: methods for every session
                def website(self, url):
                    return self.scalars(select(Website).filter_by(url=url)).one()

        with Session() as s:
            s.add(Website(url="https://example.org"))
            s.website("https://example.org")

    ``with Session() as s`` opens a new session, commits when the block ends
    normally, rolls back when it raises, and always closes it. After a
    successful commit the channels of the changed tables are notified once.

    Class attributes:

    ``engine``
        The SQLAlchemy engine (may be assigned later, e.g. after reading the
        configuration; it is looked up each time a session is opened, which
        is how the ``sbio_db`` test fixture rebinds it).
    ``base``
        The declarative base whose tables ``initialize_db`` creates. Optional:
        by default the base made by :func:`declarative_base` in the same
        module, or the only one there is.
    ``notify_changes``
        ``False`` turns change notifications off for this manager.
    ``max_row_channels``
        Row channels (``"poll:17"``) one transaction records per table, 1000
        by default; past it that table's rows are notified as ``"poll:*"``
        (every row channel of the table), which bounds the memory a large
        transaction takes and the size of the notification.
    ``notifier``
        A function ``notifier(channels)`` called after each commit instead of
        the default, ``sbio.live.notify(channels, trigger="commit")`` (which
        reaches the server(s) of the context the commit runs in).
    ``session_options``
        Extra ``sessionmaker`` arguments. sbio's defaults:
        ``expire_on_commit=False`` (objects stay usable after the ``with``
        block; the session is closed anyway).
    """

    engine: Any = None
    base: Any = None
    notify_changes = True
    max_row_channels: int = DEFAULT_MAX_ROW_CHANNELS
    notifier: Any = None
    #: extra keyword arguments of the sessionmaker (a subclass sets its own dict)
    session_options: ClassVar[dict[str, Any]] = {}
    session_class: type[SbioSession] = SbioSession
    session_factory: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        parent_session_class = cls.session_class
        mixin = cls.__dict__.get("SessionMixin")
        bases = (mixin, parent_session_class) if mixin is not None else (parent_session_class,)
        cls.session_class = type(
            f"{cls.__name__}Session",
            bases,
            {"_sbio_manager": cls, "__module__": cls.__module__},
        )
        options: dict[str, Any] = {"expire_on_commit": False}
        options.update(cls.session_options)
        cls.session_factory = sessionmaker(class_=cls.session_class, **options)

    # ---- engine / metadata ------------------------------------------

    @classmethod
    def get_engine(cls) -> Engine:
        """The engine sessions are bound to (``RuntimeError`` when none is set)."""
        if cls.engine is None:
            raise RuntimeError(
                f"{cls.__name__}.engine is not set: assign an engine, e.g. "
                f"{cls.__name__}.engine = sbio.sa.create_engine(url)"
            )
        return cls.engine

    @classmethod
    def get_base(cls) -> type[Any]:
        """The declarative base :meth:`initialize_db` creates the tables of (see ``base``)."""
        if cls.base is not None:
            return cls.base
        with _bases_lock:
            bases = list(_bases)
        same_module = [b for b in bases if b.__module__ == cls.__module__]
        if len(same_module) == 1:
            return same_module[0]
        if len(bases) == 1:
            return bases[0]
        raise RuntimeError(
            f"cannot tell which declarative base {cls.__name__} manages; set "
            f"{cls.__name__}.base = YourBase"
        )

    @classmethod
    def get_metadata(cls) -> MetaData:
        """The base's :class:`~sqlalchemy.MetaData`."""
        metadata: MetaData = cls.get_base().metadata
        return metadata

    @classmethod
    def initialize_db(cls, drop: bool = False) -> None:
        """Create the tables that do not exist yet (``drop=True``: drop all of them first).

        Never called implicitly: call it from your startup code or a migration step.
        """
        engine = cls.get_engine()
        metadata = cls.get_metadata()
        if drop:
            metadata.drop_all(engine)
        metadata.create_all(engine)

    # ---- sessions -----------------------------------------------------

    @classmethod
    def new_session(cls, **kwargs: Any) -> Any:
        """A new session bound to the current engine (you commit and close it).

        An instance of :attr:`session_class` (an :class:`SbioSession` with
        the ``SessionMixin`` methods), typed ``Any`` so those methods type-check.
        """
        kwargs.setdefault("bind", cls.get_engine())
        return cls.session_factory(**kwargs)

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self.session: Any = None

    def __enter__(self) -> Any:
        if self.session is not None:
            raise RuntimeError(
                "this SessionManager instance is already in use; call Session() again")
        self.session = type(self).new_session(**self._kwargs)
        return self.session

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        session, self.session = self.session, None
        try:
            if exc_type is None:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()
        return False
