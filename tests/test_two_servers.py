"""Two sbio servers in one process (issue 10): each owns its live data, bus and cluster.

Every server here is a real :class:`sbio.Server` on a loopback port, talked
to by python-socketio clients over real sockets (``live_client``). Each
hosts the same namespace, and each has a client subscribed to the same
channel name, ``news``; a re-run returns how many times this server ran it,
so every re-run is a push and the pushes count the notifications a server
applied. With Redis, every server gets its own ``[cluster] prefix`` (Redis
pub/sub channels ignore the database number, so two URLs of one Redis are
two clusters only with two prefixes).

"Nothing arrives" is checked after a bounded settle (as in test_cluster.py),
after something that did arrive.
"""
import collections
import os
import uuid
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import gevent
import pytest
from sqlalchemy import Column, Text

import sbio
import sbio.live as live
from sbio import Caller, Namespace, notify, notify_remote, subscribes
from sbio.config import load_sbio_config
from sbio.sa import SessionManager, create_engine, declarative_base
from sbio.server import Server
from sbio.tasks import Lifecycle

NS = "/two"
RUNS = collections.Counter()  # id(server) -> runs of on_news there


@declarative_base
class Base:
    id = Column(Text(), primary_key=True)


class Item(Base):  # table "item", channel "item"
    pass


class Session(SessionManager):
    engine = create_engine("sqlite://")  # rebound to the test database by the db fixture
    base = Base


class Two(Namespace):
    name = NS

    @subscribes("news", "item")
    def on_news(self):
        RUNS[id(self.server)] += 1
        return {"runs": RUNS[id(self.server)]}

    def on_tell(self):
        notify("news")
        return True

    def on_tell_later(self):
        notify("news", delay=True)
        return True

    def on_commit(self, key):
        with Session() as s:
            s.add(Item(id=key))
        return True


@pytest.fixture
def sbio_session_manager():
    return Session


@pytest.fixture
def servers(sbio_config):
    """Factory of started servers hosting Two (own lifecycle unless given); stopped after."""
    made = []

    def make(config=None, lifecycle=None):
        server = Server([Two], config=config or sbio_config,
                        lifecycle=Lifecycle() if lifecycle is None else lifecycle)
        # a new server may get the id() of an earlier test's, collected meanwhile
        RUNS.pop(id(server), None)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop(timeout=5)


def subscriber(sbio_live_client, server):
    sub = sbio_live_client(server, NS).subscribe("news")
    assert sub.data == {"runs": 1}
    return sub


def assert_pushes(sub, count, settle=0.5):
    """*sub* got exactly *count* pushes, and no more within *settle* seconds."""
    deadline = gevent.Timeout(10, AssertionError(
        f"{sub!r}: {len(sub.pushes)} push(es), expected {count}"))
    with deadline:
        while len(sub.pushes) < count:
            gevent.sleep(0.01)
    gevent.sleep(settle)
    assert len(sub.pushes) == count, sub.pushes


def redis_config(url, prefix=None):
    return load_sbio_config(overrides={
        "server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "t",
        "server.message_queue": url,
        "cluster.prefix": prefix or f"sbiotest-two-{uuid.uuid4().hex[:12]}"})


def with_db(url, db):
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


@pytest.fixture(params=["no redis", "two prefixes", "two urls"])
def pair_configs(request, sbio_config):
    """Configurations for servers A and B: in memory, or on Redis."""
    if request.param == "no redis":
        return sbio_config, sbio_config
    url = request.getfixturevalue("sbio_redis_url")
    if request.param == "two prefixes":
        return redis_config(url), redis_config(url)
    return redis_config(with_db(url, 0)), redis_config(with_db(url, 1))


# -- isolation ----------------------------------------------------------------------------


def test_a_notify_in_a_handler_reaches_only_its_server(pair_configs, servers, sbio_live_client):
    a, b = servers(pair_configs[0]), servers(pair_configs[1])
    assert a.bus is not b.bus
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    caller_a, caller_b = sbio_live_client(a, NS), sbio_live_client(b, NS)

    assert caller_a.call("tell")
    assert sub_a.wait_update() == {"runs": 2}
    assert caller_a.call("tell_later")
    assert sub_a.wait_update() == {"runs": 3}
    assert_pushes(sub_b, 0)

    assert caller_b.call("tell")
    assert sub_b.wait_update() == {"runs": 2}
    assert_pushes(sub_a, 2)
    assert_pushes(sub_b, 1, settle=0)


def test_a_commit_in_a_handler_reaches_only_its_server(sbio_db, servers, sbio_live_client,
                                                       sbio_config):
    a, b = servers(sbio_config), servers(sbio_config)
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    assert sbio_live_client(b, NS).call("commit", "one")
    assert sub_b.wait_update() == {"runs": 2}
    assert sub_b.pushes[-1]["trigger"] == "commit"
    assert_pushes(sub_a, 0)


def test_a_notify_from_outside_reaches_every_running_server(pair_configs, servers,
                                                              sbio_live_client):
    a, b = servers(pair_configs[0]), servers(pair_configs[1])
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    gevent.spawn(notify, "news").join(5)  # a plain greenlet: no server of its own
    assert sub_a.wait_update() == {"runs": 2}
    assert sub_b.wait_update() == {"runs": 2}
    assert_pushes(sub_a, 1)
    assert_pushes(sub_b, 1, settle=0)


def test_two_servers_on_one_prefix_are_one_cluster(sbio_redis_url, servers, sbio_live_client):
    """Same URL and prefix: the two servers hear each other (through Redis), once."""
    prefix = f"sbiotest-two-{uuid.uuid4().hex[:12]}"
    a = servers(redis_config(sbio_redis_url, prefix))
    b = servers(redis_config(sbio_redis_url, prefix))
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    assert sbio_live_client(a, NS).call("tell")
    assert sub_a.wait_update() == {"runs": 2}
    assert sub_b.wait_update(timeout=10) == {"runs": 2}
    notify("news")  # outside any context: published once for the cluster, not per server
    assert sub_a.wait_update(timeout=10) == {"runs": 3}
    assert sub_b.wait_update(timeout=10) == {"runs": 3}
    assert_pushes(sub_a, 2)
    assert_pushes(sub_b, 2, settle=0)


def test_notify_remote_on_one_prefix_reaches_only_that_server(sbio_redis_url, servers,
                                                               sbio_live_client):
    a, b = servers(redis_config(sbio_redis_url)), servers(redis_config(sbio_redis_url))
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    assert notify_remote(sbio_redis_url, "news", prefix=a.cluster.prefix) == 1
    assert sub_a.wait_update(timeout=10) == {"runs": 2}
    assert_pushes(sub_b, 0)
    assert notify_remote(sbio_redis_url, "news", prefix=b.cluster.prefix) == 1
    assert sub_b.wait_update(timeout=10) == {"runs": 2}
    assert_pushes(sub_a, 1)


def test_a_task_notifies_the_server_running_its_lifecycle(servers, sbio_live_client, sbio_config):
    life_a = Lifecycle(name="a")
    a, b = servers(sbio_config, lifecycle=life_a), servers(sbio_config)
    caller = Caller(lambda: notify("news"), lifecycle=life_a)
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    caller.defer()
    assert sub_a.wait_update() == {"runs": 2}
    assert_pushes(sub_b, 0)


def test_servers_sharing_the_default_lifecycle_run_its_tasks_once(
        sbio_lifecycle, servers, sbio_live_client, sbio_config):
    """The module-level lifecycle: started by the first server, stopped by it only."""
    calls = []
    caller = sbio.Caller(lambda: (calls.append(1), notify("news")))
    a = servers(sbio_config, lifecycle=sbio_lifecycle)
    b = servers(sbio_config, lifecycle=sbio_lifecycle)
    assert caller.lifecycle is sbio_lifecycle and sbio_lifecycle.running
    assert len(sbio_lifecycle.services) == 1  # b started nothing more
    sub_a, sub_b = subscriber(sbio_live_client, a), subscriber(sbio_live_client, b)
    caller.defer()
    assert sub_a.wait_update() == {"runs": 2}  # its lifecycle is both servers'
    assert sub_b.wait_update() == {"runs": 2}
    assert calls == [1]
    b.stop(timeout=5)
    assert sbio_lifecycle.running  # a started it: b leaves it running
    a.stop(timeout=5)
    assert not sbio_lifecycle.running


# -- start and stop in any order --------------------------------------------------------------


@pytest.mark.parametrize("first_stopped", ["a", "b"])
def test_either_server_keeps_delivering_after_the_other_stopped(
        pair_configs, servers, sbio_live_client, first_stopped):
    a, b = servers(pair_configs[0]), servers(pair_configs[1])
    gone, kept = (a, b) if first_stopped == "a" else (b, a)
    sub = subscriber(sbio_live_client, kept)
    gone.stop(timeout=5)
    assert gone not in live.running_servers() and kept in live.running_servers()
    assert kept.bus.subscriber_count == 1
    if hasattr(kept.bus, "running"):
        assert kept.bus.running and kept.bus.connected_event.is_set()
    assert sbio_live_client(kept, NS).call("tell")
    assert sub.wait_update() == {"runs": 2}
    gevent.spawn(notify, "news").join(5)
    assert sub.wait_update() == {"runs": 3}
    if kept.cluster is not None:
        assert notify_remote(kept.cluster.url, "news", prefix=kept.cluster.prefix) == 1
        assert sub.wait_update(timeout=10) == {"runs": 4}


def test_a_stopped_server_leaves_nothing_behind(pair_configs, servers):
    before = live.running_servers()
    a, b = servers(pair_configs[0]), servers(pair_configs[1])
    assert set(live.running_servers()) == set(before) | {a, b}
    a.stop(timeout=5)
    b.stop(timeout=5)
    assert live.running_servers() == before
    assert a.bus.subscriber_count == 0 and b.bus.subscriber_count == 0


# -- construction ---------------------------------------------------------------------------


class Hooked(Namespace):
    name = "/hooked"
    calls: ClassVar[list[str]] = []

    @classmethod
    def on_startup(cls):
        cls.calls.append("startup")

    @classmethod
    def on_shutdown(cls):
        cls.calls.append("shutdown")


def test_making_a_server_does_no_io_and_touches_no_global(tmp_path, monkeypatch,
                                                          sbio_lifecycle):
    (tmp_path / "development.ini").write_text("[server]\nport = not-a-port\n")
    monkeypatch.chdir(tmp_path)  # load_sbio_config() would read this file, and fail
    monkeypatch.setenv("SBIO_CONFIG_ROOT", str(tmp_path / "etc"))
    before = live.running_servers()
    Hooked.calls = []
    server = Server([Hooked])
    assert server.namespaces == {"/hooked": Hooked} and not server.started
    assert not sbio_lifecycle.has_hooks(("sbio.namespace", Hooked))
    assert live.running_servers() == before
    server.stop()  # never built: nothing to stop
    with pytest.raises(sbio.ConfigurationError, match="port"):
        server.start()  # the configuration is read on first need


def test_namespace_hooks_are_registered_at_start_and_removed_at_stop(sbio_lifecycle,
                                                                     sbio_config):
    Hooked.calls = []
    server = Server([Hooked], config=sbio_config, lifecycle=sbio_lifecycle)
    key = ("sbio.namespace", Hooked)
    assert not sbio_lifecycle.has_hooks(key)
    server.start()
    try:
        assert sbio_lifecycle.has_hooks(key) and Hooked.calls == ["startup"]
    finally:
        server.stop(timeout=5)
    assert Hooked.calls == ["startup", "shutdown"]
    assert not sbio_lifecycle.has_hooks(key)


def test_a_lazy_server_reads_its_configuration_at_start(tmp_path, monkeypatch, sbio_lifecycle):
    (tmp_path / "development.ini").write_text(
        "[server]\nhost = 127.0.0.1\nport = 0\nsecret_key = t\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SBIO_CONFIG_ROOT", str(tmp_path / "etc"))  # no /etc/sbio/sbio.ini
    server = Server([Two], lifecycle=Lifecycle())
    assert "config" not in vars(server)
    server.start()
    try:
        assert server.config["server"]["host"] == "127.0.0.1" and server.port != 0
        assert os.path.samefile(os.getcwd(), tmp_path)
        assert server in live.running_servers()
    finally:
        server.stop(timeout=5)
