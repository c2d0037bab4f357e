"""Live data: @subscribes / @notifies / notify(), the bus and the broadcaster.

The scenario tests take the ``env`` fixture. Here it gives in-process
clients (real packets, no socket); ``tests/test_live_server.py`` imports the
same scenarios and runs them against a real server over websockets.

No test sleeps to assert: waits are on a condition, each with a timeout.
"""
import collections
import gc

import gevent
import gevent.event
import pytest
from gevent import monkey

import sbio.live as live
from sbio import Namespace, RpcError, notifies, notify, subscribes
from sbio.live import Bus, LocalBus, channel_name
from sbio.testing import CallError, LocalClient

NS = "/board"


class State:
    """What the handlers read and write; fresh for every test."""

    def __init__(self):
        self.cards = ["a", "b"]
        self.rooms = {}
        self.value = 1
        self.fail = None           # "rpc" / "crash" make on_flaky fail
        self.unjsonable = False
        self.runs = collections.Counter()
        self.never = gevent.event.Event()    # set only at teardown
        self.release = gevent.event.Event()
        self.entered = gevent.event.Event()
        self.spy = None
        self.published_before_return = None


S = State()


class Board(Namespace):
    name = NS

    def on_ping(self):
        return "pong"

    def on_plain(self):
        return "not subscribable"

    def on_revoke(self, method: str):
        self.del_acl_method(method)

    @subscribes("cards")
    def on_cards(self):
        S.runs["cards"] += 1
        return list(S.cards)

    @subscribes("room:{room}")
    def on_messages(self, room: str):
        S.runs["room:" + room] += 1
        return list(S.rooms.get(room, []))

    @notifies("cards")
    def on_add_card(self, text: str):
        S.cards.append(text)
        return len(S.cards)

    @notifies("cards")
    def on_add_card_and_fail(self, text: str):
        S.cards.append(text)
        raise RpcError("failed", "changed, then failed")

    def on_say(self, room: str, text: str, fail: bool = False):
        S.rooms.setdefault(room, []).append(text)
        notify(f"room:{room}", delay=True)
        S.published_before_return = len(S.spy.published) if S.spy else None
        if fail:
            raise RpcError("failed", "said, then failed")
        return "ok"

    @notifies("room:{room}")
    def on_shout(self, room: str, text: str):
        S.rooms.setdefault(room, []).append(text.upper())

    @subscribes("cards", shared=True)
    def on_top_cards(self, limit: int = 10):
        S.runs["top"] += 1
        return S.cards[:limit]

    @subscribes("flaky")
    def on_flaky(self):
        S.runs["flaky"] += 1
        if S.fail == "rpc":
            raise RpcError("broken", "backend down")
        if S.fail == "crash":
            raise ValueError("bug in the handler")
        return S.value

    @subscribes("slow")
    def on_slow(self, who: str):
        if who == "slow" and self.subscription.data.get("answered"):
            S.never.wait()  # only the per-run timeout ends this
        self.subscription.data["answered"] = True
        return {"who": who, "value": S.value}

    @subscribes("gate")
    def on_gated(self):
        value = S.value
        S.runs["gated"] += 1
        S.entered.set()
        S.release.wait(10)
        return value

    @subscribes("gate", shared=True)
    def on_gated_shared(self):
        return self.on_gated()

    @subscribes("cards")
    def on_counted(self):
        data = self.subscription.data
        data["runs"] = data.get("runs", 0) + 1
        return {"runs": data["runs"], "sub": self.subscription.id}

    @subscribes("loop")
    @notifies("loop")
    def on_looper(self):
        S.runs["loop"] += 1
        notify("loop")
        notify("loop", delay=True)
        return S.runs["loop"]

    @subscribes("cards")
    def on_unjsonable(self):
        return {"bad": object()} if S.unjsonable else "fine"

    @subscribes("cards")
    def on_burst(self):
        return len(S.cards)

    def on_notify_many(self, channel: str, count: int):
        for _ in range(count):
            notify(channel)

    def on_unsubscribe_everything(self):
        return self.unsubscribe_all()


# -- helpers -------------------------------------------------------------------------------


def wait_for(predicate, what, timeout=5):
    """Poll *predicate* until true; fail the test after *timeout* seconds."""
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout}s waiting for {what}")):
        while not predicate():
            gevent.sleep(0.002)


class SpyBus(LocalBus):
    """A LocalBus that records what is published."""

    def __init__(self):
        super().__init__()
        self.published = []

    def publish(self, channels, trigger):
        self.published.append((tuple(channels), trigger))
        super().publish(channels, trigger)


class Env:
    """One server hosting Board, and clients of it (in-process here)."""

    kind = "local"

    def __init__(self, sbio_client):
        self._make = sbio_client
        self.server = None

    def client(self, **kwargs):
        client = self._make(Board, **kwargs)
        self.server = client.server
        return client

    @property
    def broadcaster(self):
        return self.server.live.broadcaster(NS)

    @property
    def metrics(self):
        return dict(self.broadcaster.metrics)

    def quiet(self, timeout=5):
        """Wait until nothing is queued or running in the broadcaster."""
        b = self.broadcaster
        wait_for(lambda: not b._pending and not b._requests and len(b.pool) == 0,
                 "the broadcaster to go quiet", timeout)

    def settle(self, *clients):
        """Quiet, then a round trip on each client: every push sent before has arrived."""
        self.quiet()
        for client in clients:
            assert client.call("ping") == "pong"

    def server_subs(self, client):
        return self.broadcaster.subscriptions_of(client.sid)


@pytest.fixture(autouse=True)
def state():
    S.__init__()  # in place: test_live_server imports S
    yield S
    S.never.set()
    S.release.set()


@pytest.fixture
def env(sbio_client):
    return Env(sbio_client)


@pytest.fixture
def spy(env):
    """A SpyBus as the bus of env's server (made now, open: notify() reaches it)."""
    env.client()
    bus = SpyBus()
    live_data = env.server.live
    old = live_data.set_bus(bus)
    live_data.open()
    S.spy = bus
    yield bus
    live_data.set_bus(old)
    bus.close()


# -- scenarios (also run against a real server by test_live_server.py) --------------------


def test_first_result_in_ack(env):
    c = env.client()
    assert c.call_envelope("sbio:subscribe", {"id": "raw", "event": "cards", "args": []}) == {
        "ok": True, "data": ["a", "b"]}
    sub = c.subscribe("messages", "r1")
    assert sub.data == [] and sub.updates == [] and sub.errors == []
    assert set(env.server_subs(c)) == {"raw", sub.id}


def test_update_on_notify_from_another_client(env):
    a, b = env.client(), env.client()
    sub = a.subscribe("cards")
    assert b.call("add_card", "c") == 3
    assert sub.wait_update() == ["a", "b", "c"]
    assert sub.pushes[-1] == {"id": sub.id, "data": ["a", "b", "c"], "trigger": "add_card"}
    assert sub.data == ["a", "b", "c"]


def test_update_on_notify_from_a_greenlet(env):
    c = env.client()
    sub = c.subscribe("cards")

    def daemon_like():
        S.cards.append("from a greenlet")
        notify("cards")

    gevent.spawn(daemon_like).join(timeout=5)
    assert sub.wait_update() == ["a", "b", "from a greenlet"]
    assert sub.pushes[-1]["trigger"] == "manual"


def test_update_on_notify_from_os_threads(env):
    c = env.client()
    sub = c.subscribe("cards")
    hub = gevent.get_hub()
    threads = []

    def worker(text):
        threads.append(live._real_get_ident())
        S.cards.append(text)
        notify("cards", trigger="thread")

    # a thread of gevent's thread pool
    hub.threadpool.spawn(worker, "pool").get(timeout=5)
    assert sub.wait_update() == ["a", "b", "pool"]
    # a raw OS thread, started behind monkey-patching's back
    start_new_thread = monkey.get_original("_thread", "start_new_thread")
    start_new_thread(worker, ("raw",))
    assert sub.wait_update() == ["a", "b", "pool", "raw"]
    assert len(threads) == 2 and hub.thread_ident not in threads
    assert sub.pushes[-1]["trigger"] == "thread"


def test_no_push_when_unchanged(env):
    c = env.client()
    sub = c.subscribe("cards")
    before = env.metrics
    notify("cards")
    wait_for(lambda: env.metrics["skipped_unchanged"] == before["skipped_unchanged"] + 1,
             "the unchanged re-run")
    env.settle(c)
    assert env.metrics["reruns"] == before["reruns"] + 1
    assert sub.pushes == []
    S.cards.append("c")
    notify("cards")
    assert sub.wait_update() == ["a", "b", "c"]


def test_template_channels_rerun_only_matching_subscriptions(env):
    c, other = env.client(), env.client()
    r1 = c.subscribe("messages", "r1")
    r2 = c.subscribe("messages", "r2")
    assert {"room:r1", "room:r2"} <= set(env.broadcaster.index)
    runs_r2 = S.runs["room:r2"]
    other.call("say", "r1", "hello")
    assert r1.wait_update() == ["hello"]
    assert r1.pushes[-1]["trigger"] == "say"
    # @notifies templates are bound to the call's arguments too
    other.call("shout", "r1", "hey")
    assert r1.wait_update() == ["hello", "HEY"]
    assert r1.pushes[-1]["trigger"] == "shout"
    env.settle(c)
    assert S.runs["room:r2"] == runs_r2
    assert r2.pushes == []


def test_burst_of_notifies_is_coalesced(env):
    c = env.client()
    sub = c.subscribe("burst")
    before = env.metrics["reruns"]
    S.cards.append("c")
    for _ in range(100):
        notify("cards")
    assert sub.wait_update() == 3
    env.quiet()
    assert env.metrics["reruns"] - before <= 2
    # one handler notifying 100 times
    before = env.metrics["reruns"]
    S.cards.append("d")
    c.call("notify_many", "cards", 100)
    assert sub.wait_update() == 4
    env.quiet()
    assert env.metrics["reruns"] - before <= 2
    # 100 notifies from an OS thread
    before = env.metrics["reruns"]
    S.cards.append("e")
    gevent.get_hub().threadpool.spawn(
        lambda: [notify("cards") for _ in range(100)]).get(timeout=5)
    assert sub.wait_update() == 5
    env.quiet()
    assert env.metrics["reruns"] - before <= 5


def test_notifies_during_a_run_coalesce_into_one_more_run(env):
    c, other = env.client(), env.client()
    S.release.set()
    sub = c.subscribe("gated")
    S.release.clear()
    S.entered.clear()
    S.value = 2
    notify("gate")
    S.entered.wait(5)  # the re-run is in progress, blocked
    for _ in range(100):
        other.call("notify_many", "gate", 1)  # 100 notifications from client calls
    S.value = 3
    runs = S.runs["gated"]
    S.release.set()
    assert sub.wait_update() == 2
    assert sub.wait_update() == 3
    env.quiet()
    assert S.runs["gated"] == runs + 1  # exactly one run for the 100 notifications


def test_acl_revocation_drops_the_subscription(env):
    c, other = env.client(), env.client()
    sub = c.subscribe("cards")
    other_sub = other.subscribe("cards")
    c.call("revoke", "on_cards")
    notify("cards")  # unchanged data: the ACL is checked all the same
    with pytest.raises(CallError) as err:
        sub.wait_update()
    assert err.value.code == "forbidden"
    assert env.server_subs(c) == {}
    assert env.metrics["dropped"] == 1
    S.cards.append("c")
    notify("cards")
    assert other_sub.wait_update() == ["a", "b", "c"]
    env.settle(c)
    assert len(sub.pushes) == 1
    # and it cannot be subscribed again
    with pytest.raises(CallError) as err:
        c.subscribe("cards")
    assert err.value.code == "forbidden"


def test_failing_rerun_pushes_an_error_and_a_later_rerun_recovers(env):
    c = env.client(raise_server_errors=False) if env.kind == "local" else env.client()
    sub = c.subscribe("flaky")
    assert sub.data == 1
    S.fail = "rpc"
    notify("flaky")
    with pytest.raises(CallError) as err:
        sub.wait_update()
    assert (err.value.code, err.value.message) == ("broken", "backend down")
    assert sub.pushes[-1] == {"id": sub.id, "error": {"code": "broken",
                                                      "message": "backend down"}}
    # the same error again is not pushed again
    notify("flaky")
    wait_for(lambda: S.runs["flaky"] == 3, "the second failing run")
    env.settle(c)
    assert len(sub.errors) == 1
    # a handler crash is an internal error, without traceback
    S.fail = "crash"
    notify("flaky")
    with pytest.raises(CallError) as err:
        sub.wait_update()
    assert (err.value.code, err.value.message) == ("internal", "internal server error")
    # recovery pushes the result, even though it equals the one before the errors
    S.fail = None
    notify("flaky")
    assert sub.wait_update() == 1
    assert env.server_subs(c)  # still subscribed
    assert env.metrics["errors"] == 3


def test_slow_rerun_times_out_without_delaying_other_subscribers(env, sbio_config):
    sbio_config["broadcaster"]["timeout"] = 1.0
    c = env.client()
    slow = c.subscribe("slow", "slow")
    fast = c.subscribe("slow", "fast")
    slow_on_server = env.server_subs(c)[slow.id]
    S.value = 2
    notify("slow")
    assert fast.wait_update() == {"who": "fast", "value": 2}
    assert slow_on_server.running and slow.pushes == []  # still running: fast did not wait
    with pytest.raises(CallError) as err:
        slow.wait_update(timeout=5)
    assert err.value.code == "timeout"
    assert env.metrics["timeouts"] == 1
    assert slow.id in env.server_subs(c)  # a timeout does not end the subscription


def test_unsubscribe_one_and_many(env):
    c = env.client()
    s1 = c.subscribe("cards")
    s2 = c.subscribe("messages", "r1")
    s3 = c.subscribe("top_cards", 5)
    assert c.unsubscribe(s1) is None
    assert set(env.server_subs(c)) == {s2.id, s3.id}
    S.cards.append("c")
    notify("cards")
    assert s3.wait_update() == ["a", "b", "c"]
    env.settle(c)
    assert s1.pushes == []
    c.unsubscribe(s2, s3)
    assert env.server_subs(c) == {}
    assert env.broadcaster.registry_sizes()["channels"] == 0
    assert env.broadcaster.registry_sizes()["groups"] == 0
    # unknown ids are not an error
    assert c.call_envelope("sbio:unsubscribe", {"ids": ["nope", 7]}) == {"ok": True,
                                                                        "data": None}
    assert c.call_envelope("sbio:unsubscribe", {"id": "nope"}) == {"ok": True, "data": None}


def test_unsubscribe_all_ends_every_subscription_of_the_connection_only(env):
    c, other = env.client(), env.client()
    mine = [c.subscribe("cards"), c.subscribe("messages", "r1"), c.subscribe("top_cards", 5)]
    theirs = other.subscribe("top_cards", 5)
    assert c.call("unsubscribe_everything") == 3           # Namespace.unsubscribe_all()
    assert env.server_subs(c) == {}
    assert set(env.server_subs(other)) == {theirs.id}
    S.cards.append("c")
    notify("cards")
    assert theirs.wait_update() == ["a", "b", "c"]
    env.settle(c, other)
    assert [s.pushes for s in mine] == [[], [], []]
    assert c.call("unsubscribe_everything") == 0           # none left: not an error
    assert c.subscribe("cards").data == ["a", "b", "c"]    # and it may subscribe again


def test_unsubscribe_rejects_bad_payloads(env):
    c = env.client()
    for payload in ({}, {"ids": "s1"}, {"id": True}, {"id": "a", "ids": ["b"]},
                    {"ids": [None]}, "s1", ["s1"]):
        envelope = c.call_envelope("sbio:unsubscribe", payload)
        assert envelope["ok"] is False and envelope["error"]["code"] == "bad_request", payload


def test_resubscribe_with_the_same_id_replaces(env):
    c, other = env.client(), env.client()
    first = c.subscribe("messages", "r1", id="x")
    second = c.subscribe("messages", "r2", id="x")
    subs = env.server_subs(c)
    assert list(subs) == ["x"] and subs["x"].channels == ("room:r2",)
    assert "room:r1" not in env.broadcaster.index
    other.call("say", "r1", "nobody listens")
    other.call("say", "r2", "yo")
    assert second.wait_update() == ["yo"]
    env.settle(c)
    assert first.pushes == [] and second.pushes == [{"id": "x", "data": ["yo"], "trigger": "say"}]
    # an explicit re-subscribe always answers, even with an unchanged result
    again = c.subscribe("messages", "r2", id="x")
    assert again.data == ["yo"]
    # ... and starts with fresh per-subscription state
    counted = c.subscribe("counted", id="x")
    assert counted.data == {"runs": 1, "sub": "x"}


def test_subscription_data_is_kept_per_subscription(env):
    c = env.client()
    a = c.subscribe("counted")
    b = c.subscribe("counted")
    assert a.data == {"runs": 1, "sub": a.id} and b.data == {"runs": 1, "sub": b.id}
    notify("cards")
    assert a.wait_update() == {"runs": 2, "sub": a.id}
    assert b.wait_update() == {"runs": 2, "sub": b.id}
    notify("cards")
    assert a.wait_update()["runs"] == 3


def test_shared_handler_is_computed_once_per_cycle(env):
    clients = [env.client() for _ in range(8)]
    wide = [c.subscribe("top_cards", 10) for c in clients]
    narrow = [c.subscribe("top_cards", 1) for c in clients[:4]]
    assert all(s.data == ["a", "b"] for s in wide) and all(s.data == ["a"] for s in narrow)
    assert len(env.broadcaster.groups) == 2
    runs, before = S.runs["top"], env.metrics
    S.cards.append("c")
    notify("cards")
    for sub in wide:
        assert sub.wait_update() == ["a", "b", "c"]
    env.settle(*clients)
    after = env.metrics
    assert S.runs["top"] - runs == 2  # once per distinct argument list, not once per subscriber
    assert after["reruns"] - before["reruns"] == 2
    assert after["pushes"] - before["pushes"] == 8
    assert after["skipped_unchanged"] - before["skipped_unchanged"] == 4
    assert all(s.pushes == [] for s in narrow)
    assert wide[3].pushes == [{"id": wide[3].id, "data": ["a", "b", "c"], "trigger": "manual"}]
    # each subscriber's ACL is still checked
    clients[0].call("revoke", "on_top_cards")
    S.cards.insert(0, "z")
    notify("cards")
    for sub in (wide[0], narrow[0]):
        with pytest.raises(CallError) as err:
            sub.wait_update()
        assert err.value.code == "forbidden"
    for sub in wide[1:]:
        assert sub.wait_update() == ["z", "a", "b", "c"]
    for sub in narrow[1:]:
        assert sub.wait_update() == ["z"]
    assert env.server_subs(clients[0]) == {}


@pytest.mark.parametrize("event", ["gated", "gated_shared"])
def test_notify_while_the_first_result_is_computed_is_not_lost(env, event):
    c = env.client()
    pending = gevent.spawn(c.subscribe, event)
    S.entered.wait(5)  # the first run has read value 1 and is blocked
    S.value = 2
    notify("gate")
    # let the broadcaster handle the notification while the first run is blocked
    wait_for(lambda: env.metrics["cycles"] == 1 and len(env.broadcaster.pool) == 0,
             "the broadcaster's cycle")
    S.release.set()
    sub = pending.get(timeout=5)
    if sub.updates:  # the update overtook the ack: it is at least as fresh
        assert sub.data == 2
    else:
        assert sub.data == 1
        assert sub.wait_update() == 2


def test_delay_true_fires_after_success_only(env, spy):
    c = env.client()
    sub = c.subscribe("messages", "r1")
    assert c.call("say", "r1", "one") == "ok"
    assert S.published_before_return == 0  # not yet sent when the handler returned
    assert spy.published == [(("room:r1",), "say")]
    assert sub.wait_update() == ["one"]
    with pytest.raises(CallError):
        c.call("say", "r1", "two", True)  # changed, then raised: dropped
    assert len(spy.published) == 1
    env.settle(c)
    assert len(sub.pushes) == 1
    # outside a handler, delay=True notifies at once
    notify("room:r1", delay=True)
    assert spy.published[-1] == (("room:r1",), "manual")
    assert sub.wait_update() == ["one", "two"]


def test_notifies_does_not_fire_on_an_exception(env, spy):
    c = env.client()
    sub = c.subscribe("cards")
    with pytest.raises(CallError) as err:
        c.call("add_card_and_fail", "x")
    assert err.value.code == "failed"
    assert spy.published == []
    env.settle(c)
    assert sub.pushes == []
    c.call("add_card", "y")
    assert spy.published == [(("cards",), "add_card")]
    assert sub.wait_update() == ["a", "b", "x", "y"]


def test_reruns_never_notify(env, spy):
    c = env.client()
    sub = c.subscribe("looper")
    assert sub.data == 1
    # the first run notified "loop" three times (notify, delay=True, @notifies):
    # one re-run follows, and its own notifications are dropped
    assert len(spy.published) == 3
    assert sub.wait_update() == 2
    env.quiet()
    assert S.runs["loop"] == 2 and len(spy.published) == 3
    notify("loop")
    assert sub.wait_update() == 3
    env.quiet()
    assert S.runs["loop"] == 3 and len(spy.published) == 4


def test_subscribe_rejects_bad_payloads(env):
    c = env.client()

    def code(*args):
        envelope = c.call_envelope("sbio:subscribe", *args)
        assert envelope["ok"] is False, (args, envelope)
        return envelope["error"]["code"]

    assert code() == "bad_request"
    assert code("cards") == "bad_request"
    assert code({"event": "cards"}) == "bad_request"  # no id
    assert code({"id": True, "event": "cards"}) == "bad_request"
    assert code({"id": "x" * 129, "event": "cards"}) == "bad_request"
    assert code({"id": "a", "event": 7}) == "bad_request"
    assert code({"id": "a", "event": "sbio:update"}) == "bad_request"
    assert code({"id": "a", "event": "no such"}) == "not_found"  # any string may be an event
    assert code({"id": "a", "event": "_cards"}) == "not_found"
    assert code({"id": "a", "event": "cards", "args": "x"}) == "bad_request"
    assert code({"id": "a", "event": "cards", "extra": 1}) == "bad_request"
    assert code({"id": "a", "event": "messages", "args": []}) == "bad_request"
    assert code({"id": "a", "event": "messages", "args": [1]}) == "bad_request"
    assert code({"id": "a", "event": "nope"}) == "not_found"
    envelope = c.call_envelope("sbio:subscribe", {"id": "a", "event": "plain"})
    assert envelope["error"] == {"code": "bad_request", "message": "event 'plain' cannot be "
                                 "subscribed to (mark on_plain with @subscribes)"}
    c.call("revoke", "on_cards")
    assert code({"id": "a", "event": "cards"}) == "forbidden"
    assert env.server_subs(c) == {}


def test_failed_first_call_leaves_no_subscription(env):
    c = env.client()
    S.fail = "rpc"
    with pytest.raises(CallError) as err:
        c.subscribe("flaky")
    assert err.value.code == "broken"
    S.unjsonable = True
    with pytest.raises(CallError) as err:
        c.subscribe("unjsonable")
    assert err.value.code == "internal"
    assert env.server_subs(c) == {}
    assert env.broadcaster.registry_sizes()["channels"] == 0


def test_unjsonable_rerun_result_pushes_an_internal_error(env):
    c = env.client()
    sub = c.subscribe("unjsonable")
    S.unjsonable = True
    notify("cards")
    with pytest.raises(CallError) as err:
        sub.wait_update()
    assert err.value.code == "internal"
    S.unjsonable = False
    notify("cards")
    assert sub.wait_update() == "fine"


def test_disconnect_cleans_every_registry(env):
    c = env.client()
    c.subscribe("cards")
    c.subscribe("messages", "r1")
    c.subscribe("top_cards", 3)
    sid = c.sid
    assert env.broadcaster.registry_sizes()["subscriptions"] == 3
    c.disconnect()
    wait_for(lambda: env.broadcaster.registry_sizes()["subscriptions"] == 0, "the clean-up")
    assert env.broadcaster.subscriptions_of(sid) == {}
    assert env.broadcaster.registry_sizes() == {
        "connections": 0, "subscriptions": 0, "channels": 0, "groups": 0, "pending": 0,
        "requests": 0, "running": 0}


# -- in-process only -----------------------------------------------------------------------


def _live_subscription_objects(server):
    """Subscription objects of *server* still in memory (other tests' are not counted)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects()
               if isinstance(obj, live.Subscription) and obj.instance.server is server)


def _bus_listeners_of(server):
    return sum(1 for callback, _ in server.bus._subscribers
               if getattr(callback, "ref", lambda: None)() is server.live)


def test_no_leak_after_1000_connect_subscribe_disconnect_cycles(env):
    keeper = env.client()  # keeps the server and its broadcaster alive
    keeper.subscribe("cards")
    server, b = env.server, env.broadcaster
    dispatcher = server.dispatcher(NS)
    assert _bus_listeners_of(server) == 1
    for i in range(1000):
        with LocalClient(server, NS) as c:
            c.subscribe("cards")
            c.subscribe("messages", f"room{i}")
            c.subscribe("top_cards", 2)
            if i % 100 == 0:
                notify(["cards", f"room:room{i}"])
    notify("cards")
    env.quiet()
    assert b.registry_sizes() == {"connections": 1, "subscriptions": 1, "channels": 1,
                                  "groups": 0, "pending": 0, "requests": 0, "running": 0}
    assert list(dispatcher.instances) == [keeper.sid]
    assert _live_subscription_objects(server) == 1  # the keeper's
    assert _bus_listeners_of(server) == 1
    assert len(server._connection_sessions) == 1


def test_subscription_is_none_outside_live_runs(env):
    class Probe(Namespace):
        name = "/probe"

        def on_which(self):
            return None if self.subscription is None else self.subscription.id

    c = env._make(Probe)
    assert c.call("which") is None


def test_broadcaster_starts_lazily_and_stops(env):
    c = env.client()
    b = env.broadcaster
    assert b._greenlet is None  # nothing subscribed yet: no greenlet
    sub = c.subscribe("cards")
    greenlet = b._greenlet
    assert greenlet is not None and not greenlet.dead
    env.server.live.stop(timeout=5)
    assert greenlet.dead and b._greenlet is None
    assert env.server.live._listener not in [cb for cb, _ in env.server.bus._subscribers]
    env.server.live.stop(timeout=5)  # idempotent
    # a new subscription starts it again, on the bus again
    sub2 = c.subscribe("messages", "r1")
    assert b._greenlet is not None and not b._greenlet.dead
    S.cards.append("c")
    notify("cards")
    assert sub.wait_update() == ["a", "b", "c"]
    assert sub2.pushes == []


def test_stop_kills_runs_that_do_not_finish(env, sbio_config):
    sbio_config["broadcaster"]["timeout"] = 30
    c = env.client()
    c.subscribe("slow", "slow")
    notify("slow")
    b = env.broadcaster
    wait_for(lambda: len(b.pool) == 1, "the slow run")
    env.server.live.stop(timeout=0.2)
    assert len(b.pool) == 0 and b._greenlet is None


def test_set_bus_moves_running_servers_to_the_new_bus(env):
    c = env.client()
    sub = c.subscribe("cards")
    listener = env.server.live._listener
    bus = SpyBus()
    old = env.server.live.set_bus(bus)
    try:
        assert listener not in [cb for cb, _ in old._subscribers]
        assert listener in [cb for cb, _ in bus._subscribers]
        S.cards.append("c")
        notify("cards")
        assert bus.published == [(("cards",), "manual")]
        assert sub.wait_update() == ["a", "b", "c"]
    finally:
        assert env.server.live.set_bus(old) is bus
        bus.close()
    assert listener in [cb for cb, _ in env.server.bus._subscribers]
    with pytest.raises(TypeError):
        env.server.live.set_bus(object())


def test_a_bus_subclass_only_implements_publish():
    delivered = []

    class Loopback(Bus):
        def publish(self, channels, trigger):  # e.g. through Redis, then back
            gevent.spawn(self.deliver, tuple(channels), trigger)

    bus = Loopback()
    bus.subscribe(lambda channels, trigger: delivered.append((channels, trigger)))
    bus.publish(["x"], "t")
    wait_for(lambda: delivered, "the delivery")
    assert delivered == [(("x",), "t")]
    with pytest.raises(NotImplementedError):
        Bus().publish(["x"], "t")
    bus.close()


def test_notifies_outside_a_handler_fires_on_return(spy):
    @notifies("things", "room:{room}")
    def change(room, fail=False):
        if fail:
            raise ValueError("no")
        return room

    assert change("r9") == "r9"
    assert spy.published == [(("things", "room:r9"), "change")]
    with pytest.raises(ValueError):
        change("r9", fail=True)
    assert len(spy.published) == 1


def test_notify_accepts_names_models_and_iterables(spy):
    class WebsiteURL:
        pass

    class Card:
        __tablename__ = "cards_table"

    notify("a")
    notify(["a", "b", "a"], trigger="commit")
    notify((WebsiteURL, Card, "c"))
    notify(Card)
    assert spy.published == [(("a",), "manual"), (("a", "b"), "commit"),
                             (("website_url", "cards_table", "c"), "manual"),
                             (("cards_table",), "manual")]
    assert channel_name("x:{y}") == "x:{y}"
    assert channel_name(Card()) == "cards_table"
    with pytest.raises(TypeError):
        notify(3)
    with pytest.raises(ValueError):
        notify("")


def test_decorators_check_their_channels_when_decorating():
    with pytest.raises(ValueError, match="has no argument 'room'"):
        @subscribes("room:{room}")
        def on_x(self, name):
            pass
    with pytest.raises(ValueError, match="templates name the handler's arguments"):
        @notifies("room:{}")
        def on_y(self, room):
            pass
    with pytest.raises(TypeError, match="parentheses"):
        @subscribes
        def on_z(self):
            pass

    @subscribes("room:{room.upper}", "all")
    def on_fine(self, room, **extra):
        pass

    assert on_fine._sbio_subscribes.channels.names == ("room:{room.upper}", "all")


def test_a_server_dropped_without_stop_leaves_the_bus(sbio_config):
    from sbio.server import Server

    before = len(live.running_servers())
    server = Server([Board], config=sbio_config)
    bus = server.bus
    assert bus.subscriber_count == 0  # making a server joins nothing
    assert len(live.running_servers()) == before
    server.live.open()
    assert bus.subscriber_count == 1
    assert len(live.running_servers()) == before + 1
    del server
    gc.collect()
    assert bus.subscriber_count == 0
    assert len(live.running_servers()) == before
