""":func:`create_engine`: ``sqlalchemy.create_engine`` with defaults for a gevent server."""
import logging
import sys
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

log = logging.getLogger("sbio.sa")  # one logger for the whole package, as documented


def _psycopg_blocks_gevent() -> bool:
    """True when gevent patched ``select`` but psycopg chose its blocking C wait
    (because psycopg was imported before the monkey-patching)."""
    waiting = sys.modules.get("psycopg.waiting")
    monkey = sys.modules.get("gevent.monkey")
    if waiting is None or monkey is None:
        return False
    try:
        patched = monkey.is_module_patched("select")
    except Exception:
        return False
    return bool(patched) and getattr(waiting, "wait", None) is getattr(waiting, "wait_c", object())


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """``sqlalchemy.create_engine`` with defaults that suit a gevent server.

    - PostgreSQL: ``pool_size=10, max_overflow=20, pool_pre_ping=True``.
      ``pool_size + max_overflow`` bounds how many greenlets can use the
      database at the same time; the others wait (cooperatively) up to
      ``pool_timeout`` seconds. Size it to your concurrency.
    - SQLite: ``PRAGMA foreign_keys=ON`` on every connection
      (``sqlite_foreign_keys=False`` to disable); an in-memory database gets
      one shared connection (``StaticPool``) so every greenlet sees the same
      data.

    Anything you pass wins over these defaults.
    """
    url = make_url(url)
    backend = url.get_backend_name()
    foreign_keys = kwargs.pop("sqlite_foreign_keys", True)
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            kwargs.setdefault("poolclass", StaticPool)
            connect_args = dict(kwargs.pop("connect_args", {}))
            connect_args.setdefault("check_same_thread", False)
            kwargs["connect_args"] = connect_args
    elif backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        if "poolclass" not in kwargs:
            kwargs.setdefault("pool_size", 10)
            kwargs.setdefault("max_overflow", 20)
        if _psycopg_blocks_gevent():
            log.warning(
                "psycopg was imported before gevent monkey-patched 'select': database "
                "calls will block every greenlet. Call gevent.monkey.patch_all() first."
            )
    engine = sqlalchemy.create_engine(url, **kwargs)
    if backend == "sqlite" and foreign_keys:
        event.listen(engine, "connect", _sqlite_foreign_keys)
    return engine


def _sqlite_foreign_keys(dbapi_connection: Any, connection_record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
