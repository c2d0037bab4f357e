"""The sbio pytest plugin is opt-in: other projects' pytest runs are unaffected.

Importing :mod:`sbio.testing` (or any of its modules) monkey-patches nothing;
only a project that loads the plugin gets patched (unless it says no) and
gets the fixtures. Each project test writes a small project to a temporary
directory outside the repository and runs pytest on it in a subprocess, with
this interpreter and environment (where sbio is installed).
"""
import os
import subprocess
import sys
import textwrap

import pytest
from _pytest.fixtures import getfixturemarker

import sbio.testing
import sbio.testing.fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Every fixture the plugin defines (docs/testing.md lists them).
SBIO_FIXTURES = [
    "sbio_client", "sbio_server", "sbio_live_client", "sbio_config", "sbio_config_patcher",
    "sbio_session_manager", "sbio_db_backend", "sbio_db_seed", "sbio_db",
    "sbio_lifecycle", "sbio_clock", "sbio_run_task_once",
    "sbio_postgres_url", "sbio_redis_url", "sbio_chromium",
]

#: Every module of the sbio.testing package.
TESTING_MODULES = sorted(
    "sbio.testing." + name[:-3]
    for name in os.listdir(os.path.join(REPO, "sbio", "testing"))
    if name.endswith(".py") and name != "__init__.py")


def _env(**changes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k != "SBIO_MONKEY_PATCH"}
    # sbio importable as an installed package would be (the repo is not the rootdir)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(changes)
    return env


def _python(code):
    return subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=120)


def _write(directory, name, text):
    (directory / name).write_text(textwrap.dedent(text))


def _pytest(project, *args, **env):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=project, env=_env(**env), capture_output=True, text=True,
                          timeout=300)


def _sbio_lines(output):
    """The lines of a pytest run's output naming sbio (the rootdir lines left out)."""
    return [line for line in output.splitlines()
            if "sbio" in line and not line.startswith(("rootdir:", "configfile:"))]


def test_plugin_fixtures_are_all_prefixed():
    # getfixturemarker: pytest's own test for "is a fixture", the same from
    # pytest 8.0 (a marked function) to 8.4+ (a FixtureFunctionDefinition).
    def fixtures_of(module):
        return sorted(name for name in dir(module)
                      if getfixturemarker(getattr(module, name)) is not None)

    assert fixtures_of(sbio.testing.fixtures) == sorted(SBIO_FIXTURES)
    # the plugin module itself has none: they come with the fixtures plugin it
    # registers after patching
    assert fixtures_of(sbio.testing) == []


def test_importing_sbio_testing_patches_nothing():
    result = _python(
        "import sbio.testing, socket, gevent.monkey; "
        "assert not gevent.monkey.is_module_patched('socket')")
    assert result.returncode == 0, result.stderr


def test_importing_sbio_testing_imports_no_network_library():
    result = _python(
        "import sys, sbio.testing\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "    ('socketio', 'engineio', 'gevent', 'geventwebsocket', 'ssl', 'flask'))\n"
        "assert not heavy, heavy\n"
        # the public names still load on first use
        "from sbio.testing import CallError, LocalClient, LiveClient, missing_service\n"
        "import gevent.monkey\n"
        "assert not gevent.monkey.is_module_patched('socket')\n")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", TESTING_MODULES)
def test_importing_any_module_of_sbio_testing_patches_nothing(module):
    result = _python(
        f"import {module}, gevent.monkey; "
        "assert not gevent.monkey.is_module_patched('socket')")
    assert result.returncode == 0, result.stderr


FOREIGN_CONFTEST = """
    import pytest

    @pytest.fixture
    def db():
        return "the project's own db"
"""

FOREIGN_TEST = """
    import sys

    import pytest


    def test_its_own_db_fixture(db):
        assert db == "the project's own db"


    def test_nothing_of_sbio_was_loaded(request):
        assert "sbio.testing" not in sys.modules
        assert "gevent.monkey" not in sys.modules or \\
            not sys.modules["gevent.monkey"].is_module_patched("socket")
        import socket
        assert socket.socket.__module__ == "socket"
        for name in {fixtures!r}:
            with pytest.raises(pytest.FixtureLookupError):
                request.getfixturevalue(name)


    def test_importing_sbio_testing_is_not_loading_the_plugin(request):
        # a helper of the project may import sbio's test clients: no plugin, no patching
        from sbio.testing import LocalClient, missing_service  # noqa: F401
        from gevent import monkey
        assert not monkey.is_module_patched("socket")
        assert not request.config.pluginmanager.has_plugin("sbio.testing")
"""


def test_a_foreign_project_is_unaffected(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    _write(tmp_path, "conftest.py", FOREIGN_CONFTEST)
    _write(tmp_path, "test_foreign.py", FOREIGN_TEST.format(fixtures=SBIO_FIXTURES))
    # SBIO_MONKEY_PATCH=1 alone loads nothing: it is read by the plugin only
    result = _pytest(tmp_path, SBIO_MONKEY_PATCH="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert _sbio_lines(result.stdout + result.stderr) == [], result.stdout
    listed = _pytest(tmp_path, "--fixtures", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "sbio" not in listed.stdout
    helped = _pytest(tmp_path, "--help")
    assert "sbio" not in helped.stdout


OPTED_IN_CONFTEST = """
    from gevent import monkey

    # -p: the plugin has patched before this file is imported
    PATCHED_BEFORE_CONFTEST = monkey.is_module_patched("socket")
"""

OPTED_IN_TEST = """
    import socket

    from gevent import monkey

    import conftest
    import sbio
    from sbio.tasks import DaemonTask


    class Echo(sbio.Namespace):
        name = "/echo"

        def on_echo(self, value):
            return value


    def test_patched_and_fixtures_work(sbio_client, sbio_config_patcher, sbio_config,
                                       sbio_lifecycle, sbio_run_task_once, db):
        assert monkey.is_module_patched("socket")
        assert conftest.PATCHED_BEFORE_CONFTEST == {patched_before_conftest}
        assert db == "the project's own db"       # sbio defines no `db`
        sbio_config_patcher(123, "server.port", config=sbio_config)
        assert sbio_config["server.port"] == 123
        assert sbio_client(Echo).call("echo", [1, "a"]) == [1, "a"]
        runs = []
        sbio_run_task_once(DaemonTask(lambda: runs.append(1), interval=60))
        assert runs == [1]


    def test_a_real_server(sbio_server, sbio_live_client):
        server = sbio_server(Echo)
        client = sbio_live_client(server, "/echo")
        assert client.call("echo", {{"x": b"\\x00"}}) == {{"x": b"\\x00"}}
"""


@pytest.mark.parametrize("how", ["conftest", "-p"])
def test_an_opted_in_project_gets_patched_and_every_fixture(tmp_path, how):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\n" + ("addopts = -p sbio.testing\n" if how == "-p" else ""))
    conftest = textwrap.dedent(FOREIGN_CONFTEST) + textwrap.dedent(OPTED_IN_CONFTEST)
    if how == "conftest":
        # patched at pytest_configure, after the conftest files are imported
        conftest = 'pytest_plugins = ["sbio.testing"]\n' + conftest
    (tmp_path / "conftest.py").write_text(conftest)
    _write(tmp_path, "test_opted_in.py",
           OPTED_IN_TEST.format(patched_before_conftest=how == "-p"))
    result = _pytest(tmp_path, "-rA")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert "sbio: gevent monkey-patched by the sbio plugin" in result.stdout
    if how == "conftest":
        return  # the listing is the same either way; one run of it is enough
    listed = _pytest(tmp_path, "--fixtures", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    names = {line.split(" ")[0] for line in listed.stdout.splitlines()}
    missing = [name for name in SBIO_FIXTURES if name not in names]
    assert not missing, listed.stdout


OPTED_OUT_TEST = """
    from gevent import monkey

    import sbio


    class Echo(sbio.Namespace):
        name = "/echo"

        def on_echo(self, value):
            return value


    def test_not_patched_and_the_in_process_client_works(sbio_client):
        assert monkey.is_module_patched("socket") == {patched}
        assert sbio_client(Echo).call("echo", [1, "a"]) == [1, "a"]


    def test_a_real_server(sbio_server):
        assert sbio_server(Echo).url.startswith("http://127.0.0.1:")
"""


@pytest.mark.parametrize(("ini", "env", "patched"), [
    ("sbio_monkey_patch = false", None, False),
    ("", "0", False),                              # the environment wins...
    ("sbio_monkey_patch = false", "yes", True),    # ...both ways
])
def test_a_project_says_whether_to_patch(tmp_path, ini, env, patched):
    (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = -p sbio.testing\n{ini}\n")
    _write(tmp_path, "test_opted_out.py", OPTED_OUT_TEST.format(patched=patched))
    result = _pytest(tmp_path, "-rA", **({} if env is None else {"SBIO_MONKEY_PATCH": env}))
    output = result.stdout + result.stderr
    if patched:
        assert result.returncode == 0, output
        assert "2 passed" in result.stdout
        return
    assert "1 passed, 1 error" in result.stdout, output
    assert "sbio: not monkey-patching: " in result.stdout
    # the fixture that would hang fails at once, saying how to opt in
    assert "sbio_server needs a gevent-monkey-patched process" in result.stdout
    assert "-p sbio.testing" in result.stdout


def test_a_bad_sbio_monkey_patch_value_is_a_usage_error(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p sbio.testing\n")
    _write(tmp_path, "test_x.py", "def test_x():\n    pass\n")
    result = _pytest(tmp_path, SBIO_MONKEY_PATCH="maybe")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "SBIO_MONKEY_PATCH='maybe'" in result.stderr
