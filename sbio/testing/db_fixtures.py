"""pytest fixtures for applications using :mod:`sbio.sa` (re-exported by ``sbio.testing``).

Tell the fixtures which ``SessionManager`` your application uses, once, in
your ``conftest.py``::

    import pytest
    from myapp.models import Session

    @pytest.fixture
    def sbio_session_manager():
        return Session

Then every test that asks for ``sbio_db`` gets a fresh, empty database with the
tables created, and ``Session`` bound to it for the duration of the test::

    def test_add(sbio_db):
        sbio_db.add(Website(url="https://example.org"))
        with Session() as s:
            assert s.scalars(select(Website)).one().url == "https://example.org"

The backend is SQLite in the test's temporary directory by default;
``SBIO_TEST_DB=postgres`` (or parametrizing ``sbio_db_backend``) runs against
PostgreSQL (``sbio_postgres_url``), each test in its own throw-away schema.

Seed data for a whole module by overriding ``sbio_db_seed`` there::

    @pytest.fixture
    def sbio_db_seed():
        def seed(session):
            session.add_all([Website(url="a"), Website(url="b")])
        return seed
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session as SqlaSession

    from sbio.sa import SessionManager

#: a ``seed(session)`` function
Seeder = Callable[["SqlaSession"], object]

__all__ = [
    "sbio_session_manager",
    "sbio_db_backend",
    "sbio_db_seed",
    "sbio_db",
    "DbFixture",
    "temporary_database",
    "DB_BACKEND_ENV",
]

#: Environment variable choosing the default test database backend.
DB_BACKEND_ENV = "SBIO_TEST_DB"

_ALIASES = {
    "sqlite": "sqlite",
    "": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "pg": "postgresql",
}


def _normalize_backend(name: str | None) -> str:
    key = (name or "").strip().lower()
    if key not in _ALIASES:
        raise pytest.UsageError(
            f"unknown test database backend {name!r}: use 'sqlite' or 'postgres' "
            f"(fixture sbio_db_backend / ${DB_BACKEND_ENV})"
        )
    return _ALIASES[key]


class DbFixture:
    """What the ``sbio_db`` fixture returns: a fresh database the manager is bound to.

    Attributes: ``Session`` (the SessionManager subclass), ``engine``,
    ``url`` (a ``sqlalchemy.engine.URL``), ``backend`` (``"sqlite"`` or
    ``"postgresql"``), ``schema`` (PostgreSQL only: the per-test schema).
    """

    def __init__(self, manager: type[SessionManager], engine: Engine, backend: str,
                 schema: str | None = None,
                 engine_options: dict[str, Any] | None = None) -> None:
        self.Session = manager
        self.engine = engine
        self.url = engine.url
        self.backend = backend
        self.schema = schema
        self._engine_options = dict(engine_options or {})
        self._engines = [engine]

    def session(self) -> Any:
        """``with db.session() as s:`` — the same as ``with Session() as s:``."""
        return self.Session()

    __call__ = session

    def make_engine(self, **kwargs: Any) -> Engine:
        """Another engine on this test database (e.g. with a bigger pool);
        disposed with the fixture. Does not rebind ``Session``."""
        from sbio.sa import create_engine

        options = dict(self._engine_options)
        connect_args = dict(options.pop("connect_args", {}))
        connect_args.update(kwargs.pop("connect_args", {}))
        options.update(kwargs)
        if connect_args:
            options["connect_args"] = connect_args
        engine = create_engine(self.url, **options)
        self._engines.append(engine)
        return engine

    def rebind(self, engine: Engine) -> None:
        """Point ``Session`` at *engine* for the rest of the test (restored afterwards)."""
        self.Session.engine = engine
        self.engine = engine

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        had = "notify_changes" in vars(self.Session)
        old: bool = vars(self.Session).get("notify_changes", True)
        self.Session.notify_changes = False
        try:
            yield
        finally:
            if had:
                self.Session.notify_changes = old
            else:
                del self.Session.notify_changes

    def seed(self, *seeders: Seeder, notify: bool = False) -> None:
        """Run each ``seeder(session)`` in one committed session (no change
        notifications unless ``notify=True``)."""
        ctx = contextlib.nullcontext() if notify else self._quiet()
        with ctx, self.Session() as s:
            for seeder in seeders:
                seeder(s)

    def add(self, *objects: Any, notify: bool = False) -> Any:
        """Add and commit *objects*; return them (one object if one was given).

        The session is closed afterwards; the objects keep their loaded
        attributes (``expire_on_commit=False``), so ``obj.id`` is usable.
        """
        self.seed(lambda s: s.add_all(objects), notify=notify)
        return objects[0] if len(objects) == 1 else list(objects)

    def _dispose(self) -> None:
        for engine in self._engines:
            engine.dispose()


def _pg_admin_engine(url: Any) -> Engine:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def temporary_database(manager: type[SessionManager], backend: str = "sqlite", *,
                       directory: str | os.PathLike[str] | None = None,
                       postgres_url: str | None = None,
                       engine_options: dict[str, Any] | None = None) -> Iterator[DbFixture]:
    """Bind *manager* to a new empty database with its tables created; undo on exit.

    SQLite: a file ``test.db`` in *directory* (required). PostgreSQL: a new
    schema ``sbio_test_<random>`` in the database at *postgres_url*, made the
    connections' ``search_path``, dropped (CASCADE) on exit, so parallel
    runs never see each other's tables. The manager's previous ``engine`` is
    restored on exit, whatever happened.
    """
    import sqlalchemy.exc
    from sqlalchemy import text

    from sbio.sa import create_engine

    backend = _normalize_backend(backend)
    options = dict(engine_options or {})
    schema = None
    admin = None
    if backend == "sqlite":
        if directory is None:
            raise ValueError("temporary_database(backend='sqlite') needs a directory")
        url = f"sqlite:///{os.path.join(str(directory), 'test.db')}"
    else:
        if not postgres_url:
            raise ValueError("temporary_database(backend='postgresql') needs postgres_url")
        url = postgres_url
        schema = f"sbio_test_{uuid.uuid4().hex[:16]}"
        admin = _pg_admin_engine(url)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        connect_args = dict(options.pop("connect_args", {}))
        connect_args["options"] = f"-c search_path={schema}"
        options["connect_args"] = connect_args

    had_engine = "engine" in vars(manager)
    old_engine = vars(manager).get("engine")
    database = None
    try:
        engine = create_engine(url, **options)
        database = DbFixture(manager, engine, backend, schema, options)
        manager.engine = engine
        manager.initialize_db()
        yield database
    finally:
        if had_engine:
            manager.engine = old_engine
        else:
            with contextlib.suppress(AttributeError):
                del manager.engine
        if database is not None:
            database._dispose()
        if admin is not None:
            try:
                with admin.connect() as conn:
                    conn.execute(text("SET lock_timeout = '10s'"))
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            except sqlalchemy.exc.OperationalError as e:
                raise RuntimeError(
                    f"could not drop the test schema {schema}: a connection still holds "
                    "locks in it (a session left open, or an engine the test made itself "
                    "and did not dispose)"
                ) from e
            finally:
                admin.dispose()


@pytest.fixture
def sbio_session_manager() -> type[SessionManager]:
    """The application's ``SessionManager`` subclass. Override it in conftest.py."""
    pytest.fail(
        "the sbio_db fixture needs your SessionManager: define in conftest.py\n"
        "    @pytest.fixture\n"
        "    def sbio_session_manager():\n"
        "        return Session",
        pytrace=False,
    )


@pytest.fixture
def sbio_db_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` (default) or ``"postgresql"``: ``$SBIO_TEST_DB``, or the
    parameter when parametrized (``@pytest.mark.parametrize("sbio_db_backend",
    ["sqlite", "postgres"], indirect=True)``), or override the fixture."""
    name = getattr(request, "param", None) or os.environ.get(DB_BACKEND_ENV, "sqlite")
    return _normalize_backend(name)


@pytest.fixture
def sbio_db_seed() -> Seeder | list[Seeder] | None:
    """A ``seed(session)`` function (or a list of them) run in every fresh
    ``sbio_db`` before the test. Override it in a test module to seed that module."""
    return None


@pytest.fixture
def sbio_db(request: pytest.FixtureRequest, sbio_session_manager: type[SessionManager],
            sbio_db_backend: str, sbio_db_seed: Seeder | list[Seeder] | None,
            tmp_path: os.PathLike[str]) -> Iterator[DbFixture]:
    """A fresh database for this test: tables created, ``sbio_db_seed`` applied,
    the SessionManager rebound to it and restored afterwards. Returns a
    :class:`DbFixture`."""
    postgres_url = None
    if _normalize_backend(sbio_db_backend) == "postgresql":
        postgres_url = request.getfixturevalue("sbio_postgres_url")
    with temporary_database(
        sbio_session_manager, sbio_db_backend, directory=tmp_path, postgres_url=postgres_url
    ) as database:
        if sbio_db_seed is not None:
            seeders = sbio_db_seed if isinstance(sbio_db_seed, (list, tuple)) \
                else [sbio_db_seed]
            database.seed(*seeders)
        yield database
