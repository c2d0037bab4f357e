"""sbio.Client against a real ``sbio run`` in a subprocess (tests/client_namespaces/clientdemo.py).

Calls, subscriptions, server events and calls, refusals, timeouts; a
graceful stop (SIGTERM) and a restart on the same port that the client
survives by itself (and python-socketio's own client too); the same script
with and without gevent's monkey-patching.
"""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import gevent
import pytest
import socketio

import sbio
from sbio import (
    CallTimeout,
    Client,
    ConnectionFailed,
    ConnectionRefused,
    RpcError,
    SbioTimeoutError,
)

from test_cli import free_port, wait_for_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACES = os.path.join(REPO, "tests", "client_namespaces")
#: fast reconnects for the tests (the defaults are 0.5 s doubling to 10 s)
FAST = {"reconnect_delay": 0.1, "reconnect_delay_max": 0.5}


class ServerProcess:
    """``sbio run`` of tests/client_namespaces on one port; stopped and started again at will."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
        for attempt in range(3):  # the port of a server just stopped may be busy a moment
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbio", "run", "--host", "127.0.0.1", "--port",
                 str(self.port), "--namespaces", NAMESPACES],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                wait_for_port(self.port, self.proc, timeout=30)
                return self
            except AssertionError:
                if attempt == 2:
                    raise
                gevent.sleep(0.5)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            assert self.proc.wait(timeout=20) == 0 or sig != signal.SIGTERM
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self):
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def own_server():
    """A server of this test alone (it will be stopped and restarted)."""
    proc = ServerProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def clients():
    made = []

    def make(url, namespace="/demo", **kwargs):
        client = Client(url, namespace, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class Recorder:
    """A callback that records its values; waits are count-based, with a timeout."""

    def __init__(self):
        self.values = []
        self._cond = threading.Condition()

    def __call__(self, value):
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def wait_count(self, count, timeout=15):
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.values) >= count, timeout):
                raise AssertionError(f"{count} value(s) not received within {timeout} s: "
                                     f"{self.values}")
            return self.values[count - 1]


def _login(client):
    return client.call("login", "ann", "secret")


# -- calls, events, errors ---------------------------------------------------------------


def test_call_returns_data_and_raises_rpc_errors(server, clients):
    c = clients(server.url)
    assert c.status == "open" and c.connected and c.sid
    assert c.transport() in ("polling", "websocket")
    assert c.call("echo", 1, "two", {"three": [3]}) == [1, "two", {"three": [3]}]
    with pytest.raises(RpcError) as err:
        c.call("whoami")
    assert (err.value.code, type(err.value)) == ("forbidden", RpcError)
    with pytest.raises(RpcError) as err:
        c.call("login", "ann", "nope")
    assert (err.value.code, err.value.message) == ("bad_credentials", "wrong password")
    assert _login(c) == {"user": "ann"}
    assert c.call("whoami") == "ann"
    with pytest.raises(RpcError) as err:
        c.call("crash")
    assert (err.value.code, err.value.message) == ("internal", "internal server error")
    with pytest.raises(RpcError) as err:
        c.call("nope")
    assert err.value.code == "not_found"
    with pytest.raises(ValueError):
        c.call("disconnect")  # reserved by socket.io: never sent


def test_url_path_names_the_namespace(server, clients):
    c = clients(server.url + "/demo", "/")
    assert c.namespace == "/demo" and c.call("echo", 5) == [5]
    with pytest.raises(ValueError):
        Client(server.url + "/demo", "/other")


def test_call_past_its_timeout_raises_call_timeout(server, clients):
    c = clients(server.url, timeout=10)
    _login(c)
    with pytest.raises(CallTimeout) as err:
        c.call("slow", 5, timeout=0.5)
    assert err.value.code == "timeout"
    assert isinstance(err.value, RpcError) and isinstance(err.value, SbioTimeoutError)
    assert isinstance(err.value, TimeoutError)
    assert c.call("echo", "still fine") == ["still fine"]


def test_refused_connection_raises_connection_refused_with_the_message(server):
    with pytest.raises(ConnectionRefused) as err:
        Client(server.url, "/demo", auth={"token": "bad"})
    assert (err.value.message, err.value.data) == ("bad token", {"code": 401})


def test_unknown_namespace_is_refused_and_no_server_fails(server):
    with pytest.raises(ConnectionRefused) as err:
        Client(server.url, "/nowhere")
    assert err.value.message == "Invalid namespace"
    with pytest.raises(ConnectionFailed) as failed:
        Client(f"http://127.0.0.1:{free_port()}", "/demo", timeout=3)
    assert isinstance(failed.value, ConnectionError)


def test_server_events_and_server_to_client_calls(server, clients):
    c = clients(server.url)
    _login(c)
    news, tapped = Recorder(), Recorder()
    c.on("news", news)
    c.on("*", lambda event, *args: tapped((event, list(args))))

    @c.on("confirm")
    def confirm(question):
        return f"yes to {question}"

    c.call("news", "hello")
    assert news.wait_count(1) == {"text": "hello"}
    assert tapped.wait_count(1) == ("news", [{"text": "hello"}])
    assert c.call("ask", "delete?") == {"answer": "yes to delete?"}
    errors = Recorder()
    c.on("sbio:error", errors)
    c.emit("nope")
    assert errors.wait_count(1) == {"event": "nope", "code": "not_found",
                                    "message": "no handler for event 'nope'"}


def test_handlers_given_to_the_constructor_see_what_on_connect_emits(server, clients):
    welcome = Recorder()
    clients(server.url, auth={"token": "greet"}, handlers={"welcome": welcome})
    assert welcome.wait_count(1) == "hello"


def test_callback_errors_are_logged_and_the_client_goes_on(server, clients, caplog):
    c = clients(server.url)
    _login(c)

    @c.on("confirm")
    def broken(question):
        raise KeyError("a bug in the application")

    seen = Recorder()
    c.on("news", seen)
    with pytest.raises(CallTimeout):  # the server's call got no answer: it timed out
        c.call("ask", "?")
    c.call("news", "after the error")
    assert seen.wait_count(1) == {"text": "after the error"}
    failures = [r for r in caplog.records if r.name == "sbio.client" and r.exc_info]
    assert len(failures) == 1 and "confirm" in failures[0].getMessage()


# -- subscriptions -------------------------------------------------------------------------


def test_subscribe_first_result_updates_errors_and_unsubscribe(server, clients):
    c = clients(server.url)
    _login(c)
    start = c.call("bump", 0)
    values, errors = Recorder(), Recorder()
    sub = c.subscribe("counter", callback=values)
    assert sub.data == start and sub.trigger == "subscribe"
    assert values.wait_count(1) == start
    assert c.call("bump") == start + 1
    assert sub.wait_update() == start + 1 and values.wait_count(2) == start + 1
    assert sub.trigger == "bump"
    with pytest.raises(CallTimeout):
        sub.wait_update(timeout=0.3)  # nothing new
    assert sub.unsubscribe() is None and not sub.active
    c.call("bump")
    assert c.call("echo", "sync") == ["sync"]
    assert values.values == [start, start + 1]
    with pytest.raises(RpcError):
        sub.wait_update(timeout=1)

    # a re-run that fails reaches on_error; the next good result comes again
    c.call("bump", 0)  # the module's counter is shared by every test: set it to 1
    n = c.call("bump", 1 - c.call("bump", 0))
    assert n == 1
    fragile = c.subscribe("fragile", callback=values, on_error=errors)
    assert fragile.data == 1
    c.call("bump")
    error = errors.wait_count(1)
    assert (error.code, error.message) == ("two", "two is not allowed")
    with pytest.raises(RpcError) as err:
        fragile.wait_update()
    assert err.value.code == "two"
    c.call("bump")
    assert fragile.wait_update() == 3


def test_refused_subscription_raises_and_keeps_nothing(server, clients):
    c = clients(server.url)
    with pytest.raises(RpcError) as err:
        c.subscribe("secret_counter")
    assert err.value.code == "forbidden"
    _login(c)
    with pytest.raises(RpcError) as err:
        c.subscribe("nope")
    assert err.value.code == "not_found"
    assert c.subscriptions() == []


def test_server_disconnect_is_final(server, clients):
    c = clients(server.url, **FAST)
    _login(c)
    assert c.call("kick") == "bye"
    assert c.wait_closed(timeout=15)
    assert c.status == "closed"
    with pytest.raises(RpcError) as err:
        c.call("echo", 1)
    assert err.value.code == "closed"


def test_a_slow_callback_past_max_backlog_resyncs_without_losing_the_latest(server, clients,
                                                                            caplog):
    c = clients(server.url, max_backlog=2, **FAST)
    other = clients(server.url)
    _login(c)
    gate = threading.Event()
    values = Recorder()

    def slow(value):
        gate.wait(15)
        values(value)

    c.subscribe("counter", callback=slow)
    for _ in range(6):
        other.call("bump")
    last = other.call("bump", 0)
    with caplog.at_level(logging.WARNING, "sbio.client"):
        for _ in range(150):
            if any("max_backlog" in r.getMessage() for r in caplog.records):
                break
            gevent.sleep(0.1)
    gate.set()
    for _ in range(150):  # count-based: the latest result arrives after the resync
        if values.values and values.values[-1] == last:
            break
        gevent.sleep(0.1)
    assert values.values[-1] == last
    assert any("max_backlog" in r.getMessage() for r in caplog.records)


# -- graceful stop and restart ------------------------------------------------------------


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_client_reconnects_after_a_sigterm_restart_and_resubscribes(own_server, clients,
                                                                    transports):
    c = clients(own_server.url, transports=transports, **FAST)
    c.on("connect", lambda: _login(c))  # a new connection starts logged out: log in again
    _login(c)
    values = Recorder()
    statuses = []
    c.on("disconnect", statuses.append)
    sub = c.subscribe("secret_counter", callback=values)
    c.call("bump")
    c.call("bump")
    assert values.wait_count(3) == {"user": "ann", "n": 2}

    own_server.restart()

    # by itself: the fresh result of the restarted server (its counter is 0 again)
    assert values.wait_count(4, timeout=30) == {"user": "ann", "n": 0}
    assert sub.trigger == "resubscribe" and c.status == "open"
    assert c.call("whoami") == "ann"
    c.call("bump")  # later updates keep coming
    assert values.wait_count(5) == {"user": "ann", "n": 1}
    assert c.call("echo", "sync") == ["sync"]
    assert [v["n"] for v in values.values] == [0, 1, 2, 0, 1]  # no duplicate
    assert len(statuses) == 1


def test_unchanged_result_after_a_restart_is_not_delivered_again(own_server, clients):
    c = clients(own_server.url, **FAST)
    values = Recorder()
    c.subscribe("counter", callback=values)
    assert values.wait_count(1) == 0
    own_server.restart()
    assert c.call("echo", "reconnected", timeout=30) == ["reconnected"]
    for _ in range(20):  # the resubscribe's result (0 again) has arrived by now, or soon
        gevent.sleep(0.05)
    assert values.values == [0]
    c.call("bump")
    assert values.wait_count(2) == 1


def test_calls_while_the_server_is_down_wait_for_the_reconnect(own_server, clients):
    c = clients(own_server.url, **FAST)
    own_server.stop()
    result = gevent.spawn(c.call, "echo", "later", timeout=60)
    gevent.sleep(0.5)
    assert c.status == "connecting"
    own_server.start()
    assert result.get(timeout=60) == ["later"]


def test_in_flight_call_fails_with_disconnected(own_server, clients):
    c = clients(own_server.url, **FAST)
    _login(c)
    call = gevent.spawn(c.call, "slow", 30, timeout=60)
    gevent.sleep(0.5)
    own_server.stop(signal.SIGKILL)
    with pytest.raises(RpcError) as err:
        call.get(timeout=30)
    assert err.value.code == "disconnected"


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]])
def test_python_socketio_client_reconnects_after_a_graceful_stop(own_server, transports):
    raw = socketio.Client(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5,
                          handle_sigint=False)
    connects = []
    reasons = []
    raw.on("connect", lambda: connects.append(1), namespace="/demo")
    raw.on("disconnect", lambda reason=None: reasons.append(reason), namespace="/demo")
    raw.connect(own_server.url, namespaces=["/demo"], transports=transports, wait_timeout=10)
    try:
        assert raw.call("echo", "x", namespace="/demo", timeout=10) == {"ok": True, "data": ["x"]}
        own_server.restart()
        for _ in range(300):
            if len(connects) >= 2:
                break
            gevent.sleep(0.1)
        # "transport error", not "server disconnect" (after which it would give up)
        assert len(connects) == 2 and reasons == ["transport error"]
        assert raw.call("echo", "y", namespace="/demo", timeout=10) == {"ok": True, "data": ["y"]}
    finally:
        raw.disconnect()


# -- with and without gevent -------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import json, sys, threading
    if sys.argv[2] == "gevent":
        from gevent import monkey
        monkey.patch_all()
    import sbio

    def say(**what):
        print(json.dumps(what), flush=True)

    url = sys.argv[1]
    client = sbio.Client(url, "/demo", reconnect_delay=0.1, reconnect_delay_max=0.5)
    client.on("connect", lambda: client.call("login", "ann", "secret"))
    client.call("login", "ann", "secret")
    client.on("confirm", lambda question: "ok: " + question)
    other = sbio.Client(url, "/demo")
    seen = []
    changed = threading.Event()

    def record(value):
        seen.append(value)
        changed.set()

    sub = client.subscribe("secret_counter", callback=record)
    other.call("bump")
    sub.wait_update(10)
    other.close()
    monkey = sys.modules.get("gevent.monkey")
    say(step="restart", patched=bool(monkey and monkey.is_module_patched("socket")),
        answer=client.call("ask", "go?")["answer"], n=sub.data["n"])
    def wait_seen(n):  # the callback runs on its own thread, after .data changed
        while not (seen and seen[-1]["n"] == n):
            changed.wait(30)
            changed.clear()

    wait_seen(0)  # the restarted server's fresh result
    assert sub.trigger == "resubscribe"
    client.call("bump")
    wait_seen(1)
    say(step="done", values=[v["n"] for v in seen], whoami=client.call("whoami"))
    client.close()
""")


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_the_same_script_with_and_without_gevent_monkey_patching(own_server, tmp_path, mode):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), own_server.url, mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with gevent.Timeout(60, AssertionError(f"{mode}: no 'restart' line")):
            first = json.loads(proc.stdout.readline() or "{}")
        assert first.get("step") == "restart", \
            proc.stderr.read() if proc.poll() is not None else first
        assert first["patched"] is (mode == "gevent")
        assert first["answer"] == "ok: go?"
        n = first["n"]
        own_server.restart()
        with gevent.Timeout(60, AssertionError(f"{mode}: no 'done' line")):
            second = json.loads(proc.stdout.readline() or "{}")
        assert second == {"step": "done", "values": [n - 1, n, 0, 1], "whoami": "ann"}, \
            proc.stderr.read() if proc.poll() is not None else second
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_import_sbio_and_the_client_do_not_monkey_patch():
    code = ("import sbio, sbio.client, gevent.monkey, socket; "
            "c = sbio.Client; assert not gevent.monkey.is_module_patched('socket'); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
    assert sbio.Client is Client



# -- server to server (the example of docs/python-client.md) -----------------------------------


def _doc_example(marker):
    """The fenced Python block of docs/python-client.md whose first line is *marker*."""
    text = pathlib.Path(REPO, "docs", "python-client.md").read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(marker):
            return code
    raise AssertionError(f"no example starting with {marker!r} in docs/python-client.md")


def test_server_to_server_a_daemon_task_follows_another_server(server, clients, tmp_path):
    namespaces = tmp_path / "namespaces"
    namespaces.mkdir()
    (namespaces / "dashboard.py").write_text(_doc_example("# namespaces/dashboard.py"))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
               PRICES_URL=server.url + "/prices")
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "sbio", "run", "--host", "127.0.0.1", "--port", str(port),
         "--namespaces", str(namespaces)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, dashboard, timeout=30)
        upstream = clients(server.url)
        start = upstream.call("bump", 0)
        browser = clients(f"http://127.0.0.1:{port}", "/dashboard")
        seen = Recorder()
        browser.subscribe("prices", callback=seen)
        for _ in range(300):  # None until the task's client has its first result
            if seen.values and seen.values[-1] == {"n": start}:
                break
            gevent.sleep(0.1)
        assert seen.values[-1] == {"n": start}
        upstream.call("bump")  # a change upstream reaches the dashboard's subscribers
        assert seen.wait_count(len(seen.values) + 1) == {"n": start + 1}
        dashboard.send_signal(signal.SIGTERM)
        assert dashboard.wait(timeout=30) == 0
        err = dashboard.stderr.read()
        assert "Traceback" not in err and "did not stop" not in err, err
    finally:
        if dashboard.poll() is None:
            dashboard.kill()
            dashboard.wait(timeout=10)


# -- sbio call / sbio subscribe ---------------------------------------------------------------


def _sbio(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "sbio", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO))


def test_cli_call_prints_json_and_exits_by_the_envelope(server):
    ok = _sbio("call", server.url + "/demo", "echo", "42", "ann", "true", "null",
               '{"a": [1]}', '"42"', "NaN")
    assert (ok.returncode, ok.stdout) == (0, '[42, "ann", true, null, {"a": [1]}, "42", "NaN"]\n')
    assert ok.stderr == ""
    login = _sbio("call", server.url, "login", "ann", "secret", "--namespace", "/demo")
    assert (login.returncode, json.loads(login.stdout)) == (0, {"user": "ann"})
    refused = _sbio("call", server.url + "/demo", "whoami")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert json.loads(refused.stderr) == {"error": {
        "code": "forbidden", "message": "not allowed to call 'whoami'"}}
    slow = _sbio("call", server.url + "/demo", "slow", "5", "--timeout", "1")
    assert slow.returncode == 1 and json.loads(slow.stderr)["error"]["code"] == "timeout"
    bad = _sbio("call", server.url + "/demo", "echo", "--auth", '{"token": "bad"}')
    assert bad.returncode == 3 and "bad token" in bad.stderr
    down = _sbio("call", f"http://127.0.0.1:{free_port()}/demo", "echo", "--timeout", "3")
    assert down.returncode == 3 and "cannot connect" in down.stderr
    usage = _sbio("call", server.url + "/demo", "echo", "--auth", "{not json")
    assert usage.returncode == 2 and "--auth" in usage.stderr


def test_cli_subscribe_prints_each_result_until_count(server, clients):
    other = clients(server.url)
    start = other.call("bump", 0)
    proc = subprocess.Popen([sys.executable, "-m", "sbio", "subscribe", server.url + "/demo",
                             "counter", "--count", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    try:
        lines = []
        with gevent.Timeout(60, AssertionError("sbio subscribe printed nothing")):
            lines.append(json.loads(proc.stdout.readline()))
            other.call("bump")
            lines.append(json.loads(proc.stdout.readline()))
            other.call("bump")
            lines.append(json.loads(proc.stdout.readline()))
        assert lines == [start, start + 1, start + 2]
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    refused = _sbio("subscribe", server.url + "/demo", "nope", "--count", "1")
    assert refused.returncode == 1 and json.loads(refused.stderr)["error"]["code"] == "forbidden"
