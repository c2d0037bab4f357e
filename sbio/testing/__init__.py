r"""The sbio pytest plugin: fixtures and the in-process namespace client.

Opt in, per project: installing sbio loads nothing into pytest (there is no
``pytest11`` entry point), so other projects in the same environment are
unaffected. Load the plugin with ``-p sbio.testing`` in your pytest
configuration (``addopts = -p sbio.testing`` in ``pytest.ini``: loaded
first, the best place) or with ``pytest_plugins = ["sbio.testing"]`` in your
top-level ``conftest.py``.

Importing this module *is* loading the plugin, and it has one side effect:
it monkey-patches gevent first thing (``gevent.monkey.patch_all()``), as
``sbio run`` does, unless the socket module is patched already; set
``SBIO_MONKEY_PATCH=0`` to opt out. Import it from test code only.

Fixtures (every name starts with ``sbio_``, so none collides with another
plugin's, e.g. pytest-django's ``db`` or pytest-redislite's ``redis_url``)
--------------------------------------------------------------------------
``sbio_client``
    factory of :class:`LocalClient`: an in-process client for a Namespace
    class that goes through the same dispatch code as a real connection,
    with real socket.io packets and no network.
``sbio_server``
    factory of real :class:`sbio.Server`\ s on a free loopback port, stopped
    after the test.
``sbio_live_client``
    factory of :class:`LiveClient`: a python-socketio client connected to a
    server over a real socket (websocket or polling).
``sbio_config``
    the configuration the two factories use (sbio's defaults, host 127.0.0.1,
    port 0); override it in your conftest to change settings.
``sbio_config_patcher``
    set configuration values for one test (``sbio.testing.config_fixtures``).
``sbio_db``, ``sbio_db_seed``, ``sbio_db_backend``, ``sbio_session_manager``
    a fresh database per test for :mod:`sbio.sa` applications (``sbio.testing.db_fixtures``).
``sbio_lifecycle``, ``sbio_clock``, ``sbio_run_task_once``
    background tasks under test control (``sbio.testing.task_fixtures``).
``sbio_postgres_url`` / ``sbio_redis_url`` / ``sbio_chromium``
    The local service to test against. When the service is not reachable
    the test is skipped with a message naming what is missing; with the
    environment variable ``SBIO_REQUIRE_SERVICES=1`` (set by ``.ci/run``)
    the skip becomes a failure, so CI always runs those tests.
"""
import os

if os.environ.get("SBIO_MONKEY_PATCH", "1").lower() not in ("0", "false", "no"):
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()

# Everything below imports after the patching. pytest loads this module as the
# plugin: every fixture and hook must be a name of it (imported here).
from .clients import CallError, Subscription, _ClientBase  # noqa: F401
from .config_fixtures import sbio_config_patcher  # noqa: F401
from .db_fixtures import *  # noqa: F403
from .live_client import LiveClient
from .local_client import LocalClient, _ErrorCapture, _Router  # noqa: F401
from .server_fixtures import sbio_client, sbio_config, sbio_live_client, sbio_server  # noqa: F401
from .services import (  # noqa: F401
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    REQUIRE_SERVICES_ENV,
    _network_service,
    _port_open,
    _services_required,
    missing_service,
    sbio_chromium,
    sbio_postgres_url,
    sbio_redis_url,
)
from .task_fixtures import *  # noqa: F403

__all__ = ["CallError", "LocalClient", "LiveClient", "Subscription", "missing_service"]
