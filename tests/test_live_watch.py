"""Server-side watches (``server.live.watch``): the same updates as a socket subscriber."""
import logging

import gevent
import gevent.event
import pytest

from sbio import Namespace, RpcError, notifies, subscribes

NS = "/watched"


class State:
    def __init__(self):
        self.items = ["a"]
        self.fail = False
        self.hold = None  # an Event the callback of the slow test waits on


S = State()


class Watched(Namespace):
    name = NS

    def get_initial_acl(self):
        return ["on_login", "on_ping"]

    def on_login(self, user):
        self.session["user"] = user
        self.lift_acl_restrictions()

    def on_ping(self):
        return "pong"

    @subscribes("items")
    def on_items(self):
        if S.fail:
            raise RuntimeError("failing on purpose")
        return {"items": list(S.items), "seen_by": self.session.get("user")}

    @subscribes("items", shared=True)
    def on_shared_items(self):
        return (len(S.items), tuple(S.items))  # a tuple: JSON makes it a list

    @subscribes("room:{room}")
    def on_room(self, room: str):
        return [room, len(S.items)]

    @notifies("items", "room:lobby")
    def on_add(self, item):
        S.items.append(item)

    def on_plain(self):
        return "not subscribable"


@pytest.fixture(autouse=True)
def state():
    S.__init__()
    yield S


class Recorder:
    def __init__(self):
        self.calls = []
        self.errors = []

    def __call__(self, value, trigger):
        self.calls.append((value, trigger))

    def error(self, error):
        self.errors.append(error)

    @property
    def values(self):
        return [value for value, _ in self.calls]


def wait_for(predicate, what, timeout=10):
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.002)


@pytest.mark.parametrize("event", ["items", "shared_items"])
def test_a_watch_receives_the_same_updates_as_a_socket_subscriber(sbio_server,
                                                                  sbio_live_client, event):
    server = sbio_server(Watched)
    client = sbio_live_client(server, NS)
    client.call("login", "ann")
    sub = client.subscribe(event)
    first = sub.data
    rec = Recorder()
    watch = server.live.watch(NS, event, [], rec, as_session={"user": "ann"}, acl="all")
    assert watch.alive and watch.value == sub.data
    wait_for(lambda: rec.calls, "the first result")
    assert rec.calls == [(sub.data, "subscribe")]

    for n in range(6):
        client.call("add", f"item {n}")
        sub.wait_update()
        wait_for(lambda n=n: len(rec.calls) == n + 2, f"update {n}")
    assert rec.values == [first, *sub.updates]
    assert [t for _, t in rec.calls[1:]] == [p["trigger"] for p in sub.pushes] == ["add"] * 6
    assert watch.value == sub.data
    watch.stop()
    assert not watch.alive and server.live.watches == []


def test_the_handler_runs_as_the_watch_session_and_acl(sbio_client):
    client = sbio_client(Watched)  # an in-process server: watches work there too
    server = client.server
    with pytest.raises(RpcError) as err:  # the class's initial ACL: not logged in
        server.live.watch(NS, "items", as_session={"user": "bot"})
    assert err.value.code == "forbidden"
    assert server.live.watches == []
    watch = server.live.watch(NS, "items", as_session={"user": "bot"}, acl=["on_items"])
    assert watch.value == {"items": ["a"], "seen_by": "bot"}
    assert watch.instance.session == {"user": "bot"} and watch.instance.sid == watch.id
    watch.stop()


def test_first_run_failures_raise_and_leave_nothing(sbio_client):
    server = sbio_client(Watched).server
    for event, args, code in [("nope", [], "not_found"), ("plain", [], "bad_request"),
                              ("room", [], "bad_request"), ("room", [1, 2], "bad_request")]:
        with pytest.raises(RpcError) as err:
            server.live.watch(NS, event, args, acl="all")
        assert err.value.code == code, event
    S.fail = True
    with pytest.raises(RpcError) as err:
        server.live.watch(NS, "items", acl="all")
    assert err.value.code == "internal"
    assert server.live.watches == []
    assert server.live.broadcaster(NS).registry_sizes()["subscriptions"] == 0
    with pytest.raises(KeyError):
        server.live.watch("/nowhere", "items")
    with pytest.raises(ValueError):
        server.live.watch(NS, "items", acl="everything")


def test_template_channels_errors_and_recovery(sbio_client):
    client = sbio_client(Watched)
    client.call("login", "ann")
    server = client.server
    rec = Recorder()
    lobby = server.live.watch(NS, "room", ["lobby"], rec, acl="all")
    kitchen_rec = Recorder()
    kitchen = server.live.watch(NS, "room", ["kitchen"], kitchen_rec, acl="all")
    client.call("add", "b")  # notifies "room:lobby" only
    wait_for(lambda: len(rec.calls) == 2, "the lobby update")
    assert rec.calls[1] == (["lobby", 2], "add") and lobby.value == ["lobby", 2]
    assert kitchen.value == ["kitchen", 1] and len(kitchen_rec.calls) == 1

    items = Recorder()
    watch = server.live.watch(NS, "items", [], items, on_error=items.error, acl="all")
    S.fail = True
    client.call("add", "c")
    wait_for(lambda: items.errors, "the error")
    assert items.errors == [{"code": "internal", "message": "internal server error"}]
    S.fail = False
    client.call("add", "d")
    wait_for(lambda: len(items.calls) == 2, "the recovery")
    assert watch.alive and watch.value["items"] == ["a", "b", "c", "d"]


def test_losing_the_acl_ends_the_watch(sbio_client):
    client = sbio_client(Watched)
    client.call("login", "ann")
    rec = Recorder()
    watch = client.server.live.watch(NS, "items", [], rec, on_error=rec.error, acl="all")
    watch.instance.del_acl_method("on_items")
    client.call("add", "b")
    wait_for(lambda: not watch.alive and not client.server.live.watches, "the watch to end")
    assert rec.errors == [{"code": "forbidden", "message": "not allowed to call 'items'"}]
    assert client.server.live.broadcaster(NS).registry_sizes()["subscriptions"] == 0


def test_a_failing_callback_is_logged_and_the_watch_goes_on(sbio_client, caplog):
    client = sbio_client(Watched)
    client.call("login", "ann")
    seen = []

    def callback(value, trigger):
        seen.append(value)
        raise ValueError("callback bug")

    with caplog.at_level(logging.ERROR, logger="sbio.live"):
        watch = client.server.live.watch(NS, "shared_items", [], callback, acl="all")
        client.call("add", "b")
        wait_for(lambda: len(seen) == 2, "both callbacks")
    assert seen == [[1, ["a"]], [2, ["a", "b"]]]
    assert "callback" in caplog.text and "failed" in caplog.text and watch.alive


def test_a_slow_callback_gets_the_latest_value_within_the_queue_bound(sbio_config, sbio_client):
    sbio_config["broadcaster"]["watch_queue"] = 3
    client = sbio_client(Watched)
    client.call("login", "ann")
    S.hold = gevent.event.Event()
    seen = []

    def slow(value, trigger):
        S.hold.wait(10)
        seen.append(value)

    watch = client.server.live.watch(NS, "shared_items", [], slow, acl="all")
    broadcaster = client.server.live.broadcaster(NS)
    for n in range(8):
        client.call("add", n)
        wait_for(lambda n=n: broadcaster.metrics["reruns"] >= n + 1 and not broadcaster.pool,
                 f"re-run {n}")
    S.hold.set()
    wait_for(lambda: seen and seen[-1] == [9, ["a", *range(8)]], "the latest value")
    assert watch.dropped > 0 and len(seen) < 9


def test_max_watches(sbio_config, sbio_client):
    sbio_config["broadcaster"]["max_watches"] = 2
    server = sbio_client(Watched).server
    first = [server.live.watch(NS, "shared_items", acl="all") for _ in range(2)]
    with pytest.raises(RuntimeError, match=r"too many watches on /watched \(limit 2"):
        server.live.watch(NS, "shared_items", acl="all")
    first[0].stop()
    server.live.watch(NS, "shared_items", acl="all")


def test_stopping_the_server_stops_its_watches(sbio_server):
    server = sbio_server(Watched)
    rec = Recorder()
    watch = server.live.watch(NS, "items", [], rec, acl="all")
    wait_for(lambda: rec.calls, "the first result")
    greenlet = watch._greenlet
    server.stop(timeout=5)
    assert not watch.alive and greenlet.dead and server.live.watches == []
    assert server.live.broadcaster(NS).registry_sizes()["subscriptions"] == 0
