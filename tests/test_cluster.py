"""Scale-out on Redis (issue 7): several sbio processes acting as one.

The acceptance tests start real ``python -m sbio run`` processes sharing one
Redis (db 15 of the local one through the ``redis_url`` fixture, or a Redis
server started by the test on its own port for the outage test) and talk to
them with :class:`sbio.testing.LiveClient`. Each test uses its own
``[cluster] prefix``, so concurrent test runs never see each other's
messages. Every wait is bounded; every process is killed in teardown.
"""
import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import gevent
import pytest
import socketio

import sbio
import sbio.live as live
from sbio.cluster import RedisBus, RedisLocks, notify_remote
from sbio.config import load_sbio_config
from sbio.tasks import DaemonTask, Lifecycle
from sbio.testing import LiveClient, missing_service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout, what="condition", interval=0.02):
    """Poll *predicate* (yielding to greenlets) until true; AssertionError after *timeout* s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        gevent.sleep(interval)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- a Redis of our own (for outages) ------------------------------------------------------


class RedisProcess:
    """A redis-server on its own port, owned by the test: started, stopped, restarted."""

    def __init__(self, directory):
        self.port = free_port()
        self.directory = directory
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout=10):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self._answers(), timeout, f"redis-server on port {self.port}")

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path, sbio_redis_url):
    if shutil.which("redis-server") is None:
        missing_service("redis-server (apt-get install redis-server)")
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


# -- sbio processes -----------------------------------------------------------------------

NAMESPACE_MODULE = '''
import os
import time

import gevent
from sbio import DaemonTask, Namespace
from sbio.live import notifies, subscribes

DATA = os.environ["CLUSTER_TEST_DATA"]
RUNS = {"value": 0}


def _read():
    try:
        with open(DATA) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


class ClusterNS(Namespace):
    """Cluster test namespace."""

    name = "/cluster"

    def on_pid(self):
        return os.getpid()

    def on_status(self):
        bus = self.server.bus
        cluster = self.server.cluster
        return {"pid": os.getpid(), "bus": type(bus).__name__,
                "metrics": dict(getattr(bus, "metrics", {})),
                "bus_connected": bus.connected_event.is_set(),
                "manager_connected": cluster.client_manager.connected_event.is_set()}

    @subscribes("value")
    def on_value(self):
        # "runs" changes on every re-run, so every re-run is a push: the
        # number of pushes counts the notifications this process applied.
        RUNS["value"] += 1
        return {"value": _read(), "runs": RUNS["value"], "pid": os.getpid()}

    @notifies("value")
    def on_set(self, value):
        with open(DATA + ".tmp", "w") as f:
            f.write(str(value))
        os.replace(DATA + ".tmp", DATA)
        return value

    def on_join(self, room):
        self.enter_room(room)
        return True

    def on_shout(self, room, text):
        self.broadcast("shout", text, os.getpid(), room=room)
        return True

    def on_kick(self, sid):
        self.server.sio.disconnect(sid, namespace=self.namespace)
        return True


if os.environ.get("CLUSTER_TEST_RUNS"):
    RUNS_FILE = os.environ["CLUSTER_TEST_RUNS"]

    def tick():
        start = time.time()
        gevent.sleep(0.05)
        end = time.time()
        with open(RUNS_FILE, "a") as f:  # one short line per write: atomic with O_APPEND
            f.write(f"{os.getpid()} {start:.6f} {end:.6f}\\n")

    DaemonTask(tick, interval=0.05, singleton=True, name="cluster-test-tick")
'''

class SbioProcess:
    """One ``python -m sbio run`` process; its log is in ``log_path``."""

    def __init__(self, popen, log_path):
        self.popen = popen
        self.log_path = log_path
        self.pid = popen.pid
        self.url = None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_listening(self, timeout):
        def listening():
            if self.popen.poll() is not None:
                raise AssertionError(f"sbio process {self.pid} exited with "
                                     f"{self.popen.returncode}:\n{self.log()}")
            match = re.search(r"sbio listening on (http://\S+)", self.log())
            return match and match.group(1)

        self.url = wait_until(listening, timeout, f"sbio process {self.pid} listening")
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        self.popen.wait(10)


@pytest.fixture
def sbio_cluster(tmp_path):
    """Factory: ``sbio_cluster(n, message_queue, **env) -> [SbioProcess]``, all listening.

    The processes share a namespaces directory (the ClusterNS module), a data
    file, a cluster prefix unique to the test and *env* (config variables).
    They are killed after the test.
    """
    ns_dir = tmp_path / "namespaces"
    ns_dir.mkdir()
    (ns_dir / "clusterns.py").write_text(textwrap.dedent(NAMESPACE_MODULE))
    prefix = f"sbiotest-{uuid.uuid4().hex[:12]}"
    processes = []

    def start(n, message_queue, **env):
        environ = dict(os.environ)
        environ.update({
            "PYTHONPATH": REPO + os.pathsep + environ.get("PYTHONPATH", ""),
            "SBIO_CONFIG_ROOT": str(tmp_path),
            "SBIO_SERVER__SECRET_KEY": "cluster-tests",
            "SBIO_CLUSTER__PREFIX": prefix,
            "SBIO_CLUSTER__RECONNECT_MAX_DELAY": "1",
            "CLUSTER_TEST_DATA": str(tmp_path / "value"),
            "PYTHONUNBUFFERED": "1",
        })
        environ.update({k: str(v) for k, v in env.items()})
        started = []
        for _ in range(n):
            log_path = tmp_path / f"sbio-{len(processes)}.log"
            with open(log_path, "w") as log_file:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "sbio", "run", "--port", "0", "--namespaces",
                     str(ns_dir), "--message-queue", message_queue],
                    cwd=tmp_path, env=environ, stdout=log_file, stderr=subprocess.STDOUT)
            proc = SbioProcess(popen, log_path)
            processes.append(proc)
            started.append(proc)
        for proc in started:
            proc.wait_listening(30)
        return started

    start.prefix = prefix
    yield start
    for proc in processes:
        proc.kill()


@pytest.fixture
def clients():
    """Factory of LiveClients of the cluster namespace; disconnected after the test."""
    made = []

    def connect(proc, **kwargs):
        client = LiveClient(proc.url, "/cluster", timeout=10, **kwargs)
        made.append(client)
        return client

    yield connect
    for client in made:
        with contextlib.suppress(Exception):
            client.disconnect()


def assert_no_more(sub, count, settle=1.0):
    """*sub* got exactly *count* pushes, and no more arrive within *settle* s."""
    gevent.sleep(settle)
    assert len(sub.pushes) == count, sub.pushes


# -- acceptance: three processes, one Redis ---------------------------------------------------


def test_notify_on_one_process_updates_subscribers_of_every_process_once(
        sbio_redis_url, sbio_cluster, clients):
    a, b, c = sbio_cluster(3, sbio_redis_url)
    assert len({a.pid, b.pid, c.pid}) == 3
    subs = {}
    for name, proc in (("a", a), ("b", b), ("c", c)):
        status = clients(proc).call("status")
        assert status["bus"] == "RedisBus" and status["bus_connected"], status
        subs[name] = clients(proc).subscribe("value")
        assert subs[name].data["pid"] == proc.pid

    clients(a).call("set", 41)

    for name, proc in (("a", a), ("b", b), ("c", c)):
        data = subs[name].wait_update(timeout=10)
        assert data["value"] == 41 and data["pid"] == proc.pid
        assert subs[name].pushes[0]["trigger"] == "set"
    for sub in subs.values():
        assert_no_more(sub, 1, settle=0.5)
    # At the bus level too: B and C applied one notification from another
    # process; A sent one and applied it locally only.
    assert clients(a).call("status")["metrics"]["published"] == 1
    assert clients(a).call("status")["metrics"]["received"] == 0
    for proc in (b, c):
        assert clients(proc).call("status")["metrics"]["received"] == 1

    # a second notification from C: once more everywhere
    clients(c).call("set", 42)
    for sub in subs.values():
        assert sub.wait_update(timeout=10)["value"] == 42
    for sub in subs.values():
        assert_no_more(sub, 2, settle=0.5)


def test_room_broadcast_and_disconnect_cross_processes(sbio_redis_url, sbio_cluster, clients):
    a, b, c = sbio_cluster(3, sbio_redis_url)
    members = {name: clients(proc) for name, proc in (("a", a), ("b", b), ("c", c))}
    for client in members.values():
        assert client.call("join", "r1") is True
    outsider = clients(c)

    assert members["b"].call("shout", "r1", "hello") is True

    for client in members.values():
        assert client.receive("shout", timeout=10) == ["hello", b.pid]
    gevent.sleep(0.5)
    for client in members.values():
        assert len(client.received("shout")) == 1
    assert outsider.received("shout") == []

    # a program that is not a server emits through the cluster's socket.io channel
    emitter = socketio.RedisManager(sbio_redis_url, channel=f"{sbio_cluster.prefix}:socketio",
                                    write_only=True)
    emitter.emit("shout", ("from outside", 0), namespace="/cluster", room="r1")
    for client in members.values():
        assert client.receive("shout", timeout=10, count=2) == ["from outside", 0]

    # a disconnect asked on C reaches the connection on A
    victim = clients(a)
    assert clients(c).call("kick", victim.sid) is True
    wait_until(lambda: not victim.connected, 10, "the client on A disconnected")


def test_notify_remote_reaches_every_process(sbio_redis_url, sbio_cluster, clients):
    a, b = sbio_cluster(2, sbio_redis_url)
    subs = [clients(a).subscribe("value"), clients(b).subscribe("value")]
    receivers = notify_remote(sbio_redis_url, ["value"], trigger="cron", prefix=sbio_cluster.prefix)
    assert receivers == 2  # one bus subscriber per process
    for sub in subs:
        sub.wait_update(timeout=10)
        assert sub.pushes[-1]["trigger"] == "cron"
    for sub in subs:
        assert_no_more(sub, 1, settle=0.3)


# -- acceptance: a singleton task ------------------------------------------------------------


def read_runs(path):
    runs = []
    if not os.path.exists(path):
        return runs
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:  # a line being written is skipped
                runs.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return runs


def test_singleton_task_runs_on_one_process_and_moves_when_it_dies(
        sbio_redis_url, sbio_cluster, tmp_path):
    ttl = 2.0
    runs_file = str(tmp_path / "runs")
    procs = sbio_cluster(3, sbio_redis_url, SBIO_CLUSTER__LOCK_TTL=ttl, CLUSTER_TEST_RUNS=runs_file)
    by_pid = {p.pid: p for p in procs}

    wait_until(lambda: len(read_runs(runs_file)) >= 5, 15, "five runs")
    gevent.sleep(1.0)  # every process had time to try
    holders = {pid for pid, _, _ in read_runs(runs_file)}
    assert len(holders) == 1 and holders <= set(by_pid), holders
    (holder,) = holders

    killed_at = time.time()
    by_pid[holder].kill(signal.SIGKILL)

    def taken_over():
        return [r for r in read_runs(runs_file) if r[0] != holder]

    first = wait_until(taken_over, ttl + 10, "another process running the task")[0]
    takeover = first[1] - killed_at
    # The key outlives its holder by at most the TTL; the waiters wake when it expires.
    assert takeover <= ttl + 0.75, f"took over after {takeover:.2f} s (ttl {ttl} s)"

    gevent.sleep(1.5)
    runs = read_runs(runs_file)
    after = {pid for pid, start, _ in runs if start > killed_at}
    assert after == {first[0]}, after
    # No two runs ever overlapped, across all processes.
    runs.sort(key=lambda r: r[1])
    for earlier, later in itertools.pairwise(runs):
        assert later[1] >= earlier[2], f"overlapping runs: {earlier} and {later}"


# -- acceptance: a Redis outage --------------------------------------------------------------


def test_redis_outage_keeps_local_service_and_catches_up(own_redis, sbio_cluster, clients):
    a, b = sbio_cluster(2, own_redis.url)
    sub_a = clients(a).subscribe("value")
    sub_b = clients(b).subscribe("value")
    caller_a = clients(a)
    caller_a.call("set", 1)
    assert sub_b.wait_update(timeout=10)["value"] == 1
    assert sub_a.wait_update(timeout=10)["value"] == 1

    own_redis.stop()

    # Local service goes on: calls, new connections, local notifications, local rooms.
    assert caller_a.call("pid") == a.pid
    caller_a.call("set", 2)
    assert sub_a.wait_update(timeout=10)["value"] == 2
    late = clients(a)
    assert late.call("pid") == a.pid
    room_b = clients(b)
    room_b.call("join", "r2")
    clients(b).call("shout", "r2", "still here")
    assert room_b.receive("shout", timeout=10) == ["still here", b.pid]
    gevent.sleep(0.5)
    assert [u["value"] for u in sub_b.updates] == [1]  # nothing can reach B now

    own_redis.start()

    # Catch-up: B gets the value notified on A during the outage...
    wait_until(lambda: sub_b.data["value"] == 2, 20, "B caught up with the outage")
    # ... and new notifications flow again.
    caller_a.call("set", 3)
    wait_until(lambda: sub_b.data["value"] == 3, 20, "B updated after the restart")
    assert sub_a.data["value"] == 3
    # Room broadcasts cross processes again (the socket.io channel reconnected).
    member_a = clients(a)
    member_a.call("join", "r3")

    def shout_reaches_a():
        clients(b).call("shout", "r3", "back")
        gevent.sleep(0.3)
        return member_a.received("shout")

    assert wait_until(shout_reaches_a, 20, "a room broadcast from B reaching A", 0.2)

    for proc in (a, b):
        text = proc.log()
        assert text.count("unreachable") == 1, text  # logged once...
        assert text.count("reachable again") == 1, text  # ... and its end once


# -- in-process: the pieces ------------------------------------------------------------------


@pytest.fixture
def channel():
    return f"sbiotest-{uuid.uuid4().hex[:12]}:live"


@pytest.fixture
def buses(sbio_redis_url, channel):
    made = []

    def make(url=None, **kwargs):
        bus = RedisBus(url or sbio_redis_url, channel, **kwargs).start()
        made.append(bus)
        assert bus.connected_event.wait(5)
        return bus

    yield make
    for bus in made:
        bus.close()


def recorder(bus):
    got = []
    bus.subscribe(lambda channels, trigger: got.append((channels, trigger)))
    return got


def test_bus_delivers_once_in_each_process(buses):
    one, two = buses(), buses()
    got_one, got_two = recorder(one), recorder(two)

    one.publish(("cards", "room:1"), "add")
    assert got_one == [(("cards", "room:1"), "add")]  # at once, in the publishing process
    wait_until(lambda: got_two, 5, "delivery to the other bus")
    gevent.sleep(0.3)
    assert got_one == [(("cards", "room:1"), "add")]  # not again from Redis
    assert got_two == [(("cards", "room:1"), "add")]
    assert one.metrics["published"] == 1 and two.metrics["received"] == 1


def test_bus_publish_from_an_os_thread(buses):
    one, two = buses(), buses()
    got_two = recorder(two)
    thread = threading.Thread(target=one.publish, args=(("t",), "thread"))
    thread.start()
    thread.join(5)
    wait_until(lambda: got_two == [(("t",), "thread")], 5, "delivery of a thread's publish")


def test_bus_ignores_malformed_messages(buses, sbio_redis_url, channel, caplog):
    bus = buses()
    got = recorder(bus)
    import redis

    client = redis.Redis.from_url(sbio_redis_url)
    client.publish(channel, b"not json")
    client.publish(channel, b'{"o": "x", "c": "not a list"}')
    notify_remote(sbio_redis_url, "ok", prefix=channel.rsplit(":", 1)[0])
    wait_until(lambda: got, 5, "the valid message")
    assert got == [(("ok",), "manual")]
    assert bus.metrics["malformed"] == 2
    client.close()


def test_notify_remote_accepts_models_and_counts_receivers(buses, sbio_redis_url, channel):
    bus = buses()
    got = recorder(bus)

    class WebsiteURL:
        pass

    prefix = channel.rsplit(":", 1)[0]
    assert notify_remote(sbio_redis_url, [WebsiteURL, "cards", "cards"], prefix=prefix) == 1
    wait_until(lambda: got, 5, "delivery")
    assert got == [(("website_url", "cards"), "manual")]
    assert notify_remote(sbio_redis_url, [], prefix=prefix) == 0


class Proxy:
    """A TCP proxy in front of a Redis: cutting it cuts off only the clients behind it."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target_port = target_port
        self.server = None
        self.sockets = set()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        from gevent.server import StreamServer

        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.start()

    def _handle(self, client, address):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.sockets.update((client, upstream))
        other = gevent.spawn(self._pipe, upstream, client)
        self._pipe(client, upstream)
        other.join(5)

    def _pipe(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._close(sock)

    def _close(self, sock):
        self.sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self):
        self.server.stop(timeout=1)
        for sock in list(self.sockets):
            self._close(sock)


def test_bus_cut_off_holds_notifications_and_publishes_them_when_back(
        own_redis, caplog):
    """One process loses Redis while another keeps it: local delivery goes on,
    held notifications reach the other process once it is back, and the cut-off
    process re-runs its own subscriptions (it missed what others published)."""
    proxy = Proxy(own_redis.port)
    proxy.start()
    channel = "outage:live"
    one = RedisBus(proxy.url, channel, reconnect_max_delay=0.5, socket_timeout=1).start()
    two = RedisBus(own_redis.url, channel, reconnect_max_delay=0.5).start()
    try:
        assert one.connected_event.wait(5) and two.connected_event.wait(5)
        got_one, got_two = recorder(one), recorder(two)
        caplog.set_level(logging.INFO, logger="sbio.cluster")

        proxy.cut()
        wait_until(lambda: not one.connected_event.is_set(), 5, "the cut noticed")
        one.publish(("a",), "x")
        one.publish(("a", "b"), "y")
        two.publish(("missed",), "z")  # one cannot get this one
        assert got_one == [(("a",), "x"), (("a", "b"), "y")]  # local delivery goes on
        wait_until(lambda: one.metrics["held"] == 2, 5, "notifications held")
        gevent.sleep(0.3)
        assert got_two == [(("missed",), "z")]  # nothing from one yet
        resyncs = one.metrics["resyncs"]

        proxy.start()
        wait_until(lambda: len(got_two) > 1, 15, "held notifications published when back")
        # coalesced by channel: "a" once, with the latest trigger
        assert sorted(got_two[1:]) == [(("a", "b"), "y")]
        assert one.metrics["republished"] == 2
        assert one.metrics["resyncs"] == resyncs + 1  # one catches up with what it missed
        gevent.sleep(0.3)
        assert len(got_one) == 2  # its own notifications are not applied twice
        one.publish(("c",), "w")
        wait_until(lambda: got_two[-1] == (("c",), "w"), 5, "a new notification flowing")
        messages = [r.getMessage() for r in caplog.records if r.name == "sbio.cluster"]
        assert sum("unreachable" in m for m in messages) == 1, messages
        assert sum("reachable again" in m for m in messages) == 1, messages
    finally:
        one.close()
        two.close()
        proxy.cut()


def test_bus_started_while_redis_is_unreachable_publishes_when_it_comes(own_redis):
    proxy = Proxy(own_redis.port)  # not started: connections are refused
    channel = "late:live"
    two = RedisBus(own_redis.url, channel, reconnect_max_delay=0.5).start()
    one = RedisBus(proxy.url, channel, reconnect_max_delay=0.5, socket_timeout=1).start()
    try:
        assert two.connected_event.wait(5)
        got_one, got_two = recorder(one), recorder(two)
        one.publish(("early",), "x")
        assert got_one == [(("early",), "x")]
        wait_until(lambda: one.metrics["held"] == 1, 5, "the notification held")
        proxy.start()
        wait_until(lambda: got_two == [(("early",), "x")], 15, "the held notification sent")
    finally:
        one.close()
        two.close()
        if proxy.server is not None:
            proxy.cut()


def test_bus_asks_for_a_full_resync_when_too_much_was_held(own_redis):
    proxy = Proxy(own_redis.port)
    proxy.start()
    channel = "overflow:live"
    one = RedisBus(proxy.url, channel, max_pending=3, reconnect_max_delay=0.5,
                   socket_timeout=1).start()
    two = RedisBus(own_redis.url, channel, reconnect_max_delay=0.5).start()
    try:
        assert one.connected_event.wait(5) and two.connected_event.wait(5)
        proxy.cut()
        wait_until(lambda: not one.connected_event.is_set(), 5, "the cut noticed")
        for i in range(10):
            one.publish((f"c{i}",), "x")
        wait_until(lambda: one.metrics["held"] == 10, 5, "notifications held")
        resyncs = two.metrics["resyncs"]
        proxy.start()
        wait_until(lambda: two.metrics["resyncs"] > resyncs, 15, "the other process resyncing")
    finally:
        one.close()
        two.close()
        proxy.cut()


def test_a_server_cut_off_from_redis_reruns_its_subscriptions_when_back(
        own_redis, sbio_lifecycle, sbio_live_client):
    """What other processes notified while a server was cut off reaches its clients."""
    from sbio.server import Server

    state = {"value": 0}

    class Counter(sbio.Namespace):
        name = "/counter"

        @sbio.subscribes("value")
        def on_value(self):
            return state["value"]

    proxy = Proxy(own_redis.port)
    proxy.start()
    config = cluster_config(proxy.url, reconnect_max_delay=0.5, socket_timeout=1)
    server = Server([Counter], config=config).start()
    try:
        sub = sbio_live_client(server, "/counter").subscribe("value")
        prefix = server.cluster.prefix
        state["value"] = 1
        notify_remote(own_redis.url, "value", prefix=prefix)
        assert sub.wait_update(timeout=10) == 1

        proxy.cut()
        wait_until(lambda: not server.cluster.bus.connected_event.is_set(), 5, "the cut")
        state["value"] = 2
        assert notify_remote(own_redis.url, "value", prefix=prefix) == 0  # nobody hears it
        gevent.sleep(0.3)
        assert sub.updates == [1]

        proxy.start()
        assert sub.wait_update(timeout=15) == 2
        assert sub.pushes[-1]["trigger"] == "resync"
    finally:
        server.stop(timeout=5)
        proxy.cut()


RESYNC_STATE = {"cards": 1, "fixed": "same"}


class Resynced(sbio.Namespace):
    name = "/resynced"

    @live.subscribes("cards")
    def on_cards(self):
        return RESYNC_STATE["cards"]

    @live.subscribes("fixed")
    def on_fixed(self):
        return RESYNC_STATE["fixed"]


def test_resync_reruns_every_local_subscription(buses, sbio_client):
    """After a reconnection a process re-runs its subscriptions (pushes only changes)."""
    bus = buses()
    c = sbio_client(Resynced)
    previous = c.server.live.set_bus(bus)  # its server joins the Redis bus
    try:
        cards, fixed = c.subscribe("cards"), c.subscribe("fixed")
        RESYNC_STATE["cards"] = 2  # changed while the notification was lost
        bus.resync_local()
        assert cards.wait_update(5) == 2
        assert cards.pushes[-1]["trigger"] == "resync"
        broadcaster = c.server.live.broadcaster("/resynced")
        for _ in range(100):  # both re-ran; only the changed one was pushed
            if broadcaster.metrics["skipped_unchanged"] >= 1:
                break
            gevent.sleep(0.02)
        assert broadcaster.metrics["skipped_unchanged"] == 1
        assert fixed.pushes == []
    finally:
        c.server.live.set_bus(previous)
        RESYNC_STATE["cards"] = 1


# -- in-process: the server wiring -------------------------------------------------------------


def cluster_config(url, **cluster):
    overrides = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "t",
                 "server.message_queue": url,
                 "cluster.prefix": f"sbiotest-{uuid.uuid4().hex[:12]}"}
    overrides.update({f"cluster.{k}": v for k, v in cluster.items()})
    return load_sbio_config(overrides=overrides)


def test_server_installs_the_cluster_and_restores_everything_on_stop(
        sbio_redis_url, sbio_lifecycle):
    from sbio.cluster import RedisManager
    from sbio.server import Server

    server = Server(config=cluster_config(sbio_redis_url))
    assert isinstance(server.sio.manager, RedisManager)
    assert server.sio.manager.channel == f"{server.cluster.prefix}:socketio"
    assert not server.bus.running  # built, not started: nothing connects yet
    server.start()
    try:
        assert isinstance(server.bus, RedisBus) and server.bus is server.cluster.bus
        assert server.bus.channel == f"{server.cluster.prefix}:live"
        assert server.bus.running and server in live.running_servers()
        assert isinstance(sbio_lifecycle.lock_backend, RedisLocks)
        assert server.cluster.wait_connected(5)
    finally:
        server.stop(timeout=5)
    assert not server.bus.running and server not in live.running_servers()
    assert sbio_lifecycle.lock_backend is None
    assert not server.sio.manager.connected_event.is_set()


def test_servers_of_one_process_have_their_own_bus(sbio_redis_url, sbio_lifecycle):
    from sbio.server import Server

    config = cluster_config(sbio_redis_url)
    one = Server(config=config, lifecycle=Lifecycle()).start()
    two = Server(config=config, lifecycle=Lifecycle()).start()
    try:
        assert one.bus is one.cluster.bus and two.bus is two.cluster.bus
        assert one.bus is not two.bus and one.bus.running and two.bus.running
        one.stop(timeout=5)
        assert not one.bus.running and two.bus.running
        assert live.running_servers().count(two) == 1 and one not in live.running_servers()
    finally:
        one.stop(timeout=5)
        two.stop(timeout=5)
    assert not two.bus.running


def test_server_without_message_queue_has_no_cluster(sbio_config):
    from sbio.server import Server

    server = Server(config=sbio_config)
    assert server.cluster is None
    assert type(server.sio.manager).__name__ == "Manager"


def test_a_message_queue_that_is_not_redis_is_refused(sbio_config):
    from sbio.server import Server

    sbio_config["server"]["message_queue"] = "amqp://guest@localhost//"
    with pytest.raises(ValueError, match="not a Redis URL"):
        Server(config=sbio_config)


def test_a_missing_client_library_is_named(sbio_config):
    from sbio.server import Server

    pytest.importorskip("redis")
    try:
        import valkey  # noqa: F401
        pytest.skip("valkey is installed")
    except ImportError:
        pass
    sbio_config["server"]["message_queue"] = "valkey://127.0.0.1:6379/0"
    with pytest.raises(sbio.SbioError, match="valkey package is not installed"):
        Server(config=sbio_config)


def test_a_server_refuses_a_message_queue_without_monkey_patching(sbio_redis_url, tmp_path):
    script = textwrap.dedent(f"""
        import sbio
        from sbio.config import load_sbio_config
        config = load_sbio_config(overrides={{"server.port": 0, "server.secret_key": "t",
                                             "server.message_queue": {sbio_redis_url!r}}})
        try:
            sbio.Server(config=config).start()
        except sbio.SbioError as exc:
            print("refused:", exc)
    """)
    env = dict(os.environ, SBIO_CONFIG_ROOT=str(tmp_path),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "refused: server.message_queue needs gevent monkey-patching" in result.stdout, \
        result.stdout + result.stderr


def test_configure_gives_a_lifecycle_its_lock(sbio_redis_url):
    from sbio.cluster import configure

    lifecycle = Lifecycle()
    locks = configure(sbio_redis_url, lifecycle, prefix="p", lock_ttl=3)
    assert lifecycle.lock_backend is locks and locks.ttl == 3 and locks.key("t") == "p:lock:t"


def test_notify_remote_is_exported():
    assert sbio.notify_remote is notify_remote


# -- in-process: singleton tasks -----------------------------------------------------------------


@pytest.fixture
def prefix():
    return f"sbiotest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def lifecycles():
    made = []

    def make(locks):
        lifecycle = Lifecycle(name=f"node{len(made)}")
        lifecycle.lock_backend = locks
        made.append(lifecycle)
        return lifecycle

    yield make
    for lifecycle in made:
        lifecycle.stop(timeout=5)


def test_singleton_runs_on_one_lifecycle_and_moves_on_stop(sbio_redis_url, prefix, lifecycles):
    runs = []
    nodes = []
    for i in range(3):
        lifecycle = lifecycles(RedisLocks(sbio_redis_url, prefix, ttl=2))
        DaemonTask(lambda i=i: runs.append(i), interval=0.02, singleton=True, name="job",
                   lifecycle=lifecycle)
        nodes.append(lifecycle)
        lifecycle.start()
    wait_until(lambda: len(runs) >= 5, 5, "runs")
    gevent.sleep(0.3)
    assert len(set(runs)) == 1
    holder = runs[0]
    nodes[holder].stop(timeout=5)  # releases the lock: a waiter takes over...
    del runs[:]
    wait_until(lambda: runs, 2 / 3 + 0.8, "a takeover")  # ... within ttl/3 (+ slack)
    gevent.sleep(0.3)
    assert len(set(runs)) == 1 and holder not in runs


def test_singleton_holder_that_loses_its_lock_stops_running(sbio_redis_url, prefix, lifecycles,
                                                             caplog):
    locks = RedisLocks(sbio_redis_url, prefix, ttl=1.5)
    runs = []
    DaemonTask(lambda: runs.append(time.monotonic()), interval=0.02, singleton=True,
               name="job", lifecycle=lifecycles(locks)).lifecycle.start()
    wait_until(lambda: runs, 5, "the first run")
    import redis

    client = redis.Redis.from_url(sbio_redis_url)
    client.set(locks.key("job"), "someone-else", px=10000)  # stolen
    stolen_at = time.monotonic()
    wait_until(lambda: any("lost its cluster lock" in r.getMessage() for r in caplog.records),
               5, "the loss noticed")
    gevent.sleep(0.2)
    count = len(runs)
    gevent.sleep(0.5)
    assert len(runs) == count  # it stopped running
    assert runs[-1] - stolen_at <= 1.5 / 3 + 0.2  # at the next renewal
    client.delete(locks.key("job"))
    client.close()


def test_singleton_holder_cut_off_from_redis_stops_before_its_lock_expires(
        own_redis, prefix, lifecycles, caplog):
    ttl = 1.5
    runs = []
    lifecycle = lifecycles(RedisLocks(own_redis.url, prefix, ttl=ttl, socket_timeout=0.5))
    DaemonTask(lambda: runs.append(time.monotonic()), interval=0.02, singleton=True,
               name="job", lifecycle=lifecycle)
    lifecycle.start()
    wait_until(lambda: runs, 5, "the first run")
    own_redis.stop()
    cut_at = time.monotonic()
    wait_until(lambda: any("could not renew" in r.getMessage() for r in caplog.records),
               ttl + 2, "the holder giving up")
    last = runs[-1]
    # The lock was renewed at most ttl/3 before the cut: it expires after
    # cut_at + 2/3 ttl at the earliest, and the holder stopped before that.
    assert last < cut_at + ttl
    gevent.sleep(0.3)
    assert runs[-1] == last


def test_singleton_without_a_lock_backend_runs_here(sbio_lifecycle):
    runs = []
    DaemonTask(lambda: runs.append(1), interval=0.01, singleton=True, name="solo")
    sbio_lifecycle.start()
    wait_until(lambda: len(runs) >= 2, 5, "runs")


def test_singleton_needs_one_thread():
    with pytest.raises(ValueError, match="singleton"):
        DaemonTask(lambda: None, threads=2, singleton=True, lifecycle=Lifecycle())
