"""The hooks of the sbio pytest plugin: monkey-patching, then the fixtures.

Importing this module (or :mod:`sbio.testing`) does nothing but define
functions. The work starts only when pytest *registers* :mod:`sbio.testing`
as a plugin, which a project asks for itself (``-p sbio.testing`` or
``pytest_plugins = ["sbio.testing"]``; sbio has no ``pytest11`` entry point):

1. at the earliest hook the plugin sees (``pytest_load_initial_conftests``
   when loaded with ``-p``, before any conftest is imported; otherwise
   ``pytest_configure``), ``gevent.monkey.patch_all()`` runs, unless the
   project said no (:func:`monkey_patch_wanted`) or the socket module is
   patched already;
2. then :mod:`sbio.testing.fixtures` is registered as a second plugin, so
   the fixtures' imports (socket.io, Flask, SQLAlchemy...) come after the
   patching.
"""
from __future__ import annotations

import os

import pytest

__all__ = ["MONKEY_PATCH_ENV", "MONKEY_PATCH_INI", "FIXTURES_PLUGIN", "monkey_patch_wanted",
           "monkey_patched", "require_monkey_patched", "pytest_addoption",
           "pytest_load_initial_conftests", "pytest_configure", "pytest_report_header"]

#: Environment variable overriding the ini option: ``0``/``false``/``no`` or ``1``/``true``/``yes``.
MONKEY_PATCH_ENV = "SBIO_MONKEY_PATCH"
#: The ini option (pytest.ini / pyproject.toml / tox.ini / setup.cfg), a bool, true by default.
MONKEY_PATCH_INI = "sbio_monkey_patch"
#: The module holding every ``sbio_*`` fixture, registered by the plugin once it has patched.
FIXTURES_PLUGIN = "sbio.testing.fixtures"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

#: what the plugin did, for the report header: "patched", "already", "off: <why>"
_STATE = pytest.StashKey[str]()


def monkey_patch_wanted(config: pytest.Config) -> tuple[bool, str]:
    """Whether the plugin should monkey-patch for *config*, and why (for messages).

    ``SBIO_MONKEY_PATCH`` in the environment wins when set; otherwise the ini
    option ``sbio_monkey_patch`` (default true) decides.
    """
    raw = os.environ.get(MONKEY_PATCH_ENV)
    if raw is not None and raw.strip():
        value = raw.strip().lower()
        if value in _TRUE:
            return True, f"{MONKEY_PATCH_ENV}={raw}"
        if value in _FALSE:
            return False, f"{MONKEY_PATCH_ENV}={raw}"
        raise pytest.UsageError(f"{MONKEY_PATCH_ENV}={raw!r}: use 1/true/yes or 0/false/no")
    if config.getini(MONKEY_PATCH_INI):
        return True, f"{MONKEY_PATCH_INI} is true"
    return False, f"{MONKEY_PATCH_INI} = false in the ini file"


def monkey_patched() -> bool:
    """True when gevent has patched the socket module (by the plugin or anyone else)."""
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


def require_monkey_patched(what: str) -> None:
    """Fail the current test with how to opt in, unless the process is monkey-patched.

    For fixtures that would hang without it: a blocking client socket in the
    test's thread would stall a gevent server running in the same thread.
    """
    if monkey_patched():
        return
    pytest.fail(
        f"{what} needs a gevent-monkey-patched process, and this one is not patched. "
        f"Load the sbio plugin with `-p sbio.testing` (pytest.ini addopts) and leave "
        f"`{MONKEY_PATCH_INI}` true and {MONKEY_PATCH_ENV} unset, or call "
        "gevent.monkey.patch_all() yourself before anything imports socket or ssl "
        "(see docs/testing.md, 'Loading the plugin').", pytrace=False)


def _activate(config: pytest.Config) -> None:
    """Patch (if wanted) and register the fixtures, once per *config*."""
    if _STATE in config.stash:
        return
    wanted, why = monkey_patch_wanted(config)
    if monkey_patched():
        state = "already"
    elif wanted:
        from gevent import monkey

        monkey.patch_all()
        state = "patched"
    else:
        state = f"off: {why}"
    config.stash[_STATE] = state
    if not config.pluginmanager.has_plugin(FIXTURES_PLUGIN):
        config.pluginmanager.import_plugin(FIXTURES_PLUGIN)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(MONKEY_PATCH_INI, type="bool", default=True,
                  help="sbio: call gevent.monkey.patch_all() when the sbio plugin loads "
                       f"(default true; the environment variable {MONKEY_PATCH_ENV} overrides)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Loaded with -p: before any conftest file (and what it imports) is imported.
    _activate(early_config)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Loaded by a conftest's pytest_plugins: the earliest hook still to come.
    _activate(config)


def pytest_report_header(config: pytest.Config) -> str:
    state = config.stash.get(_STATE, "")
    if state == "patched":
        return "sbio: gevent monkey-patched by the sbio plugin"
    if state == "already":
        return "sbio: gevent monkey-patching was already done"
    return f"sbio: not monkey-patching: {state[5:]}"
