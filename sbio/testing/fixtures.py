"""Every ``sbio_*`` fixture, in one module: the second plugin the sbio plugin registers.

:mod:`sbio.testing` (the plugin a project loads) registers this module with
pytest once it has monkey-patched, so what the fixtures import (socket.io,
Flask, SQLAlchemy...) is imported after the patching. Do not load it
yourself; load ``sbio.testing``.
"""
from .config_fixtures import sbio_config_patcher
from .db_fixtures import sbio_db, sbio_db_backend, sbio_db_seed, sbio_session_manager
from .server_fixtures import sbio_client, sbio_config, sbio_live_client, sbio_server
from .services import sbio_chromium, sbio_postgres_url, sbio_redis_url
from .task_fixtures import sbio_clock, sbio_lifecycle, sbio_run_task_once

__all__ = [
    "sbio_client", "sbio_server", "sbio_live_client", "sbio_config", "sbio_config_patcher",
    "sbio_session_manager", "sbio_db_backend", "sbio_db_seed", "sbio_db",
    "sbio_lifecycle", "sbio_clock", "sbio_run_task_once",
    "sbio_postgres_url", "sbio_redis_url", "sbio_chromium",
]
