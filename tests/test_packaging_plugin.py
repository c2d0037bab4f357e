"""The sbio pytest plugin is opt-in: other projects' pytest runs are unaffected.

Each test writes a small project to a temporary directory outside the
repository and runs pytest on it in a subprocess, with this interpreter and
environment (where sbio is installed).
"""
import os
import subprocess
import sys
import textwrap

import pytest
from _pytest.fixtures import getfixturemarker

import sbio.testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Every fixture the plugin defines (docs/testing.md lists them).
SBIO_FIXTURES = [
    "sbio_client", "sbio_server", "sbio_live_client", "sbio_config", "sbio_config_patcher",
    "sbio_session_manager", "sbio_db_backend", "sbio_db_seed", "sbio_db",
    "sbio_lifecycle", "sbio_clock", "sbio_run_task_once",
    "sbio_postgres_url", "sbio_redis_url", "sbio_chromium",
]

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
"""


def _write(directory, name, text):
    (directory / name).write_text(textwrap.dedent(text))


def _pytest(project, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # sbio importable as an installed package would be (the repo is not the rootdir)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_plugin_fixtures_are_all_prefixed():
    # getfixturemarker: pytest's own test for "is a fixture", the same from
    # pytest 8.0 (a marked function) to 8.4+ (a FixtureFunctionDefinition).
    defined = sorted(name for name in dir(sbio.testing)
                     if getfixturemarker(getattr(sbio.testing, name)) is not None)
    assert defined == sorted(SBIO_FIXTURES)


def test_a_foreign_project_is_unaffected(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    _write(tmp_path, "conftest.py", FOREIGN_CONFTEST)
    _write(tmp_path, "test_foreign.py", FOREIGN_TEST.format(fixtures=SBIO_FIXTURES))
    result = _pytest(tmp_path, "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    listed = _pytest(tmp_path, "--fixtures", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "sbio" not in listed.stdout


OPTED_IN_TEST = """
    import socket

    from gevent import monkey

    import sbio
    from sbio.tasks import DaemonTask


    class Echo(sbio.Namespace):
        name = "/echo"

        def on_echo(self, value):
            return value


    def test_patched_and_fixtures_work(sbio_client, sbio_config_patcher, sbio_config,
                                       sbio_lifecycle, sbio_run_task_once, db):
        assert monkey.is_module_patched("socket")
        assert db == "the project's own db"       # sbio defines no `db`
        sbio_config_patcher(123, "server.port", config=sbio_config)
        assert sbio_config["server.port"] == 123
        assert sbio_client(Echo).call("echo", [1, "a"]) == [1, "a"]
        runs = []
        sbio_run_task_once(DaemonTask(lambda: runs.append(1), interval=60))
        assert runs == [1]
"""


@pytest.mark.parametrize("how", ["conftest", "-p"])
def test_an_opted_in_project_gets_every_fixture(tmp_path, how):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\n" + ("addopts = -p sbio.testing\n" if how == "-p" else ""))
    conftest = FOREIGN_CONFTEST
    if how == "conftest":
        conftest = 'pytest_plugins = ["sbio.testing"]\n' + textwrap.dedent(conftest)
    _write(tmp_path, "conftest.py", conftest)
    _write(tmp_path, "test_opted_in.py", OPTED_IN_TEST)
    result = _pytest(tmp_path, "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    if how == "conftest":
        return  # the listing is the same either way; one run of it is enough
    listed = _pytest(tmp_path, "--fixtures", "-q")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    names = {line.split(" ")[0] for line in listed.stdout.splitlines()}
    missing = [name for name in SBIO_FIXTURES if name not in names]
    assert not missing, listed.stdout
