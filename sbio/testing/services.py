"""The local services tests run against (PostgreSQL, Redis, Chromium): found, or the test skips.

``SBIO_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns the skip into a failure.
"""
from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

__all__ = ["REQUIRE_SERVICES_ENV", "DEFAULT_POSTGRES_URL", "DEFAULT_REDIS_URL",
           "missing_service", "sbio_postgres_url", "sbio_redis_url", "sbio_chromium"]

#: Environment variable that turns "service missing" skips into failures.
REQUIRE_SERVICES_ENV = "SBIO_REQUIRE_SERVICES"

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def _services_required() -> bool:
    return os.environ.get(REQUIRE_SERVICES_ENV, "").lower() in ("1", "true", "yes")


def missing_service(what: str) -> NoReturn:
    """Skip the current test because *what* is missing (fail instead under CI)."""
    message = f"{what} is not available"
    if _services_required():
        pytest.fail(f"{message} and {REQUIRE_SERVICES_ENV} is set", pytrace=False)
    pytest.skip(message)


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _network_service(what: str, url: str, default_port: int, module: str,
                     install_hint: str) -> str:
    """*url* when its client library imports and its port accepts connections."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        missing_service(f"{what} client library {module} ({install_hint})")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if not _port_open(host, port):
        missing_service(f"{what} at {host}:{port}")
    return url


@pytest.fixture(scope="session")
def sbio_postgres_url() -> str:
    """SQLAlchemy URL of the local PostgreSQL (``SBIO_TEST_POSTGRES_URL`` overrides)."""
    return _network_service("PostgreSQL",
                            os.environ.get("SBIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                            5432, "psycopg", "pip install 'sbio[postgres]'")


@pytest.fixture(scope="session")
def sbio_redis_url() -> str:
    """URL of the local Redis (``SBIO_TEST_REDIS_URL`` overrides; db 15 by default)."""
    return _network_service("Redis", os.environ.get("SBIO_TEST_REDIS_URL", DEFAULT_REDIS_URL),
                            6379, "redis", "pip install 'sbio[redis]'")


@pytest.fixture(scope="session")
def sbio_chromium() -> str:
    """Path of a Chromium binary for Playwright (``SBIO_CHROMIUM`` overrides)."""
    path = os.environ.get("SBIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        missing_service("Chromium (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_service("Playwright (pip install playwright)")
    return path
