"""`sbio run` in a subprocess: start-up, namespace loading, graceful SIGTERM."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from sbio.testing import LiveClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.communicate()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} not open after {timeout}s")


def sbio_run(*args, cwd=REPO):
    # the bundled board keeps its SQLite file in memory, not in the repo
    env = dict(os.environ, PYTHONUNBUFFERED="1", BOARD_DB__URL="sqlite://")
    return subprocess.Popen([sys.executable, "-m", "sbio", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def app_dir(tmp_path):
    ns = tmp_path / "namespaces"
    ns.mkdir()
    (ns / "lifecycle_app.py").write_text(textwrap.dedent(f"""
        from sbio import Namespace, DaemonTask, on_shutdown

        LOG = {str(tmp_path / "events.log")!r}

        def record(line):
            with open(LOG, "a") as f:
                f.write(line + "\\n")

        def tick():
            record("tick")

        DaemonTask(tick, interval=3600)  # runs once at start, then waits

        @on_shutdown
        def goodbye():
            record("shutdown hook")

        class Life(Namespace):
            name = "/life"

            @classmethod
            def on_startup(cls):
                record("namespace startup")

            def on_ping(self):
                return "pong"
        """))
    return tmp_path


def test_sigterm_stops_gracefully(app_dir):
    port = free_port()
    proc = sbio_run("--port", str(port), "--namespaces", "namespaces", cwd=app_dir)
    try:
        wait_for_port(port, proc)
        client = LiveClient(f"http://127.0.0.1:{port}", "/life")
        assert client.call("ping") == "pong"
        proc.send_signal(signal.SIGTERM)
        client.receive("disconnect", timeout=10)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = (app_dir / "events.log").read_text().splitlines()
    assert lines[0] == "namespace startup"
    assert "tick" in lines
    assert lines[-1] == "shutdown hook"


def test_bundled_chat_over_the_cli():
    port = free_port()
    proc = sbio_run("--port", str(port))
    try:
        wait_for_port(port, proc)
        client = LiveClient(f"http://127.0.0.1:{port}", "/chat")
        assert client.call_envelope("whoami")["error"]["code"] == "forbidden"
        assert client.call_envelope("login", "ann", "secret") == {"ok": True,
                                                                  "data": {"user": "ann"}}
        client.disconnect()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_broken_namespace_module_fails_with_one_line(tmp_path):
    ns = tmp_path / "namespaces"
    ns.mkdir()
    (ns / "good.py").write_text("from sbio import Namespace\nclass Good(Namespace):\n"
                                "    name = '/good'\n")
    (ns / "broken.py").write_text("import sbio\n\nvalue = undefined_name\n")
    proc = sbio_run("--port", str(free_port()), "--namespaces", str(ns), cwd=tmp_path)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "namespaces/broken.py (line 3)" in lines[0]
    assert "NameError" in lines[0]


def test_startup_hook_failure_aborts_with_a_clear_message(tmp_path):
    ns = tmp_path / "namespaces"
    ns.mkdir()
    (ns / "bad_start.py").write_text(textwrap.dedent("""
        from sbio import on_startup

        @on_startup
        def connect_to_backend():
            raise ConnectionError("backend unreachable")
        """))
    proc = sbio_run("--port", str(free_port()), "--namespaces", str(ns), cwd=tmp_path)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "connect_to_backend" in err and "backend unreachable" in err
    assert "Traceback" not in err


def test_bad_configuration_is_reported(tmp_path):
    (tmp_path / "development.ini").write_text("[server]\nport = many\n")
    proc = sbio_run(cwd=tmp_path)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "server.port" in err
    assert "Traceback" not in err
