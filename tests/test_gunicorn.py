"""gunicorn with sbio.gunicorn.Worker serves what `sbio run` serves, with its lifecycle.

gunicorn runs as a subprocess in a temporary project directory, on the
bundled demo (fresh SQLite there): its startup hook creates the tables, its
DaemonTask pushes statistics, and SIGTERM stops it cleanly.
"""
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import requests
import websocket
from werkzeug.test import Client

from sbio import Server
from sbio.testing import LiveClient, missing_service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 60  # gunicorn boots, then the worker imports the app; the machine may be busy
STOP_TIMEOUT = 40   # server.shutdown_timeout (10 s) plus gunicorn's own slack


@pytest.fixture(scope="module")
def gunicorn_available():
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        missing_service("gunicorn (pip install 'sbio[gunicorn]')")


def _no_control_socket():
    """gunicorn's --no-control-socket where it has one (newer releases open a
    control socket by default; 23.x, the declared floor, has none)."""
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return []
    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


_NO_CONTROL_SOCKET = _no_control_socket()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, app, **env):
    port = _free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "sbio.gunicorn.Worker", "-w", "1",
           "-b", f"127.0.0.1:{port}", *_NO_CONTROL_SOCKET, app]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    env["PYTHONPATH"] = os.pathsep.join([REPO, str(workdir), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{proc.communicate()[0]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/sbio/sbio.js", timeout=2).ok:
                return proc, f"http://127.0.0.1:{port}"
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"gunicorn did not serve within {START_TIMEOUT} s:\n"
                         f"{proc.communicate(timeout=5)[0]}")


def _stop(proc):
    """SIGTERM (gunicorn's graceful stop); the exit status and the output."""
    proc.send_signal(signal.SIGTERM)
    try:
        output = proc.communicate(timeout=STOP_TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate(timeout=5)[0]
        raise AssertionError(f"gunicorn did not stop within {STOP_TIMEOUT} s:\n{output}") from None
    return proc.returncode, output


def test_gunicorn_serves_the_demo_with_its_lifecycle(tmp_path, gunicorn_available,
                                                       static_node_modules):
    (tmp_path / "development.ini").write_text(
        f"[server]\nnamespaces = {REPO}/namespaces\nstatic_dir = {REPO}/static\n"
        "secret_key = gunicorn-tests\n")
    proc, url = _start(tmp_path, "sbio.wsgi:app", BOARD_STATS__INTERVAL="0.2")
    clients = []
    try:
        assert '<a href="/board/">' in requests.get(url + "/", timeout=5).text
        assert requests.get(url + "/board/", timeout=5).status_code == 200
        assert requests.get(url + "/sbio/socket.io.min.js", timeout=5).status_code == 200

        ann = LiveClient(url, "/board", timeout=10)       # over a websocket
        clients.append(ann)
        ann.call("login", "ann", "secret")                # the startup hook made the tables
        stats = ann.subscribe("stats")
        ann.call("add_card", "main", "under gunicorn")
        for _ in range(50):                               # the DaemonTask runs every 0.2 s
            if stats.wait_update(timeout=10).get("online") == ["ann"]:
                break
        else:
            pytest.fail("the demo's stats task never reported ann online")

        # sbio's websocket handler and its frame limit, not gevent-websocket's
        ws = websocket.create_connection(
            url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", timeout=10)
        assert ws.recv().startswith("0")
        ws.send('42/chat,["x","' + "x" * 1_100_000 + '"]')
        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        ws.close()
        assert struct.unpack("!H", frame.data[:2])[0] == 1009
    finally:
        for client in clients:
            client.disconnect()
        started = time.monotonic()
        code, output = _stop(proc)
    assert code == 0, output
    assert time.monotonic() - started < STOP_TIMEOUT
    assert "sbio stopped" in output and "lifecycle stopped" in output, output
    assert "Traceback" not in output and "never started" not in output, output
    assert (tmp_path / "sbio-demo.db").exists()           # the project directory's database


USERS_APP = """
    import os

    import sbio
    from sbio import Namespace, Server


    class Echo(Namespace):
        name = "/echo"

        def on_echo(self, value):
            return value


    def started():
        with open("hooks.log", "a") as f:
            f.write(f"startup {os.getpid()}\\n")


    def stopped():
        with open("hooks.log", "a") as f:
            f.write(f"shutdown {os.getpid()}\\n")


    sbio.on_startup(started)
    sbio.on_shutdown(stopped)
    server = Server([Echo])
"""


def test_gunicorn_serves_a_users_own_server(tmp_path, gunicorn_available):
    (tmp_path / "myapp.py").write_text(textwrap.dedent(USERS_APP))
    proc, url = _start(tmp_path, "myapp:server", SBIO_SERVER__SECRET_KEY="k")
    try:
        client = LiveClient(url, "/echo", timeout=10)
        assert client.call("echo", {"a": [1]}) == {"a": [1]}
        client.disconnect()
    finally:
        code, output = _stop(proc)
    assert code == 0, output
    lines = (tmp_path / "hooks.log").read_text().split()
    assert lines[0::2] == ["startup", "shutdown"], output
    assert lines[1] == lines[3]                           # both in the worker process


def test_serving_an_unstarted_server_logs_one_error(caplog):
    server = Server([])
    client = Client(server)                              # as any WSGI server would
    with caplog.at_level(logging.ERROR, logger="sbio.server"):
        for _ in range(3):
            assert client.get("/sbio/sbio.js").status_code in (200, 404)
    errors = [r for r in caplog.records if "never started" in r.getMessage()]
    assert len(errors) == 1
    assert "sbio.gunicorn.Worker" in errors[0].getMessage()
