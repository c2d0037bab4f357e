"""pytest plugin for sbio applications (registered as the ``sbio`` pytest11 entry point).

Fixtures
--------
``postgres_url`` / ``redis_url`` / ``chromium_executable``
    The local service to test against. When the service is not reachable
    the test is skipped with a message naming what is missing; with the
    environment variable ``SBIO_REQUIRE_SERVICES=1`` (set by ``.ci/run``)
    the skip becomes a failure, so CI always runs those tests.
"""
import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

#: Environment variable that turns "service missing" skips into failures.
REQUIRE_SERVICES_ENV = "SBIO_REQUIRE_SERVICES"

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def _services_required():
    return os.environ.get(REQUIRE_SERVICES_ENV, "").lower() in ("1", "true", "yes")


def missing_service(what):
    """Skip the current test because *what* is missing (fail instead under CI)."""
    message = f"{what} is not available"
    if _services_required():
        pytest.fail(f"{message} and {REQUIRE_SERVICES_ENV} is set", pytrace=False)
    pytest.skip(message)


def _port_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of the local PostgreSQL (``SBIO_TEST_POSTGRES_URL`` overrides)."""
    url = os.environ.get("SBIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    parts = urlsplit(url)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_service("PostgreSQL driver psycopg (pip install 'sbio[postgres]')")
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 5432):
        missing_service(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}")
    return url


@pytest.fixture(scope="session")
def redis_url():
    """URL of the local Redis (``SBIO_TEST_REDIS_URL`` overrides; db 15 by default)."""
    url = os.environ.get("SBIO_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    parts = urlsplit(url)
    try:
        import redis  # noqa: F401
    except ImportError:
        missing_service("Redis client library redis (pip install 'sbio[redis]')")
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 6379):
        missing_service(f"Redis at {parts.hostname}:{parts.port or 6379}")
    return url


@pytest.fixture(scope="session")
def chromium_executable():
    """Path of a Chromium binary for Playwright (``SBIO_CHROMIUM`` overrides)."""
    path = os.environ.get("SBIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        missing_service("Chromium (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_service("Playwright (pip install playwright)")
    return path
