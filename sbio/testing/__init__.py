r"""The sbio pytest plugin: fixtures and the in-process namespace client.

Opt in, per project: installing sbio loads nothing into pytest (there is no
``pytest11`` entry point), so other projects in the same environment are
unaffected. Load the plugin with ``-p sbio.testing`` in your pytest
configuration (``addopts = -p sbio.testing`` in ``pytest.ini``: loaded
first, the best place) or with ``pytest_plugins = ["sbio.testing"]`` in your
top-level ``conftest.py``.

Importing this package has no side effects, and imports neither gevent nor
socket.io: the names below are loaded on first use. Only when pytest loads
it as a plugin does it act (see :mod:`sbio.testing._plugin`): at the earliest
hook it calls ``gevent.monkey.patch_all()``, as ``sbio run`` does, unless the
socket module is patched already or the project said no (ini option
``sbio_monkey_patch = false``, or ``SBIO_MONKEY_PATCH=0`` in the environment,
which wins over the ini option); then it registers
:mod:`sbio.testing.fixtures`, which holds the fixtures.

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
import importlib
from typing import TYPE_CHECKING

# The plugin's hooks: pytest finds them here, in the module it loaded.
from ._plugin import pytest_addoption as pytest_addoption
from ._plugin import pytest_configure as pytest_configure
from ._plugin import pytest_load_initial_conftests as pytest_load_initial_conftests
from ._plugin import pytest_report_header as pytest_report_header

#: public name -> module that defines it (imported on first use)
_EXPORTS = {
    "CallError": "sbio.testing.clients",
    "Subscription": "sbio.testing.clients",
    "LocalClient": "sbio.testing.local_client",
    "LiveClient": "sbio.testing.live_client",
    "missing_service": "sbio.testing.services",
    "DEFAULT_POSTGRES_URL": "sbio.testing.services",
    "DEFAULT_REDIS_URL": "sbio.testing.services",
    "REQUIRE_SERVICES_ENV": "sbio.testing.services",
    "FakeClock": "sbio.testing.task_fixtures",
    "DbFixture": "sbio.testing.db_fixtures",
    "temporary_database": "sbio.testing.db_fixtures",
    "DB_BACKEND_ENV": "sbio.testing.db_fixtures",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .clients import CallError as CallError
    from .clients import Subscription as Subscription
    from .db_fixtures import DB_BACKEND_ENV as DB_BACKEND_ENV
    from .db_fixtures import DbFixture as DbFixture
    from .db_fixtures import temporary_database as temporary_database
    from .live_client import LiveClient as LiveClient
    from .local_client import LocalClient as LocalClient
    from .services import DEFAULT_POSTGRES_URL as DEFAULT_POSTGRES_URL
    from .services import DEFAULT_REDIS_URL as DEFAULT_REDIS_URL
    from .services import REQUIRE_SERVICES_ENV as REQUIRE_SERVICES_ENV
    from .services import missing_service as missing_service
    from .task_fixtures import FakeClock as FakeClock


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sbio.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

