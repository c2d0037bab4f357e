"""Per-connection limits (issue 11, items 3, 4 and 6), attacked over real sockets.

* subscription arguments bounded in bytes per connection (and the count a
  config key);
* calls in flight bounded per connection, past it ``rate_limited`` without a
  new greenlet; a connection's handler greenlets end when it goes;
* rate limits: the per-connection token bucket, ``@sbio.rate_limit``, and the
  close after sustained abuse;
* JSON hygiene: NaN/Infinity and deep nesting in, NaN out, a result too deep
  for python-socketio's encoder; repeated errors logged once with a count.

The attacker speaks raw Engine.IO frames over a websocket (``websocket-client``).
"""
import contextlib
import gc
import json
import logging

import gevent
import gevent.event
import greenlet
import pytest
import websocket

from sbio import Namespace, subscribes
from sbio.config import load_sbio_config

NS = "/limits"


def _config(**overrides):
    """sbio's test configuration with dotted-key *overrides* (``server__x=1`` -> ``server.x``)."""
    base = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "sbio-tests"}
    base.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_sbio_config(overrides=base)


def _strict_loads(text):
    """json.loads that refuses NaN/Infinity, as JSON.parse in a browser does."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _nested(depth):
    """A list nested *depth* levels deep: ``[[[...]]]``."""
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture
def ns():
    """A fresh namespace class per test (its counters and its release event)."""

    class Limits(Namespace):
        name = NS
        release = gevent.event.Event()
        started = 0
        exited = 0

        def on_echo(self, *args):
            return list(args)

        def on_block(self):
            type(self).started += 1
            try:
                self.release.wait(60)
            except gevent.GreenletExit:
                type(self).exited += 1
                raise
            return "released"

        def on_nan(self):
            return float("nan")

        def on_emit_nan(self):
            self.emit("news", float("nan"))
            return "sent"

        def on_broadcast_inf(self):
            self.broadcast("news", {"value": float("inf")})
            return "sent"

        def on_broadcast_ok(self):
            self.broadcast("news", {"value": 1})
            return "sent"

        def on_deep(self, depth):
            return _nested(depth)

        def on_crash(self, blob=None):
            raise RuntimeError("handler bug")

        @subscribes("blob")
        def on_blob(self, blob):
            return len(blob)

        @subscribes("nan")
        def on_live_nan(self):
            return float("nan")

    yield Limits
    Limits.release.set()  # whatever is still blocked ends now


class Raw:
    """One attacker connection: raw Engine.IO/Socket.IO text frames over a websocket."""

    def __init__(self, server, namespace=NS):
        url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=10)
        assert self.ws.recv().startswith("0{")
        self.ns = namespace
        self.frames = []  # every socket.io frame received (pings answered, not kept)
        self.ws.send(f"40{namespace},")
        assert self.recv().startswith(f"40{namespace},")

    def send(self, text):
        self.ws.send(text)

    def call(self, ack_id, event, *json_args):
        """Send an acked event; *json_args* are JSON texts put in the array as they are."""
        self.send(f"42{self.ns},{ack_id}[" + ",".join([json.dumps(event), *json_args]) + "]")

    def emit(self, event, *json_args):
        self.send(f"42{self.ns},[" + ",".join([json.dumps(event), *json_args]) + "]")

    def recv(self):
        """The next frame that is not a ping; '' when the server closed the connection."""
        while True:
            try:
                frame = self.ws.recv()
            except websocket.WebSocketConnectionClosedException:
                return ""
            if frame == "2":
                self.ws.send("3")
                continue
            if not isinstance(frame, str):
                return frame
            if frame:
                self.frames.append(frame)
            return frame

    def ack(self, ack_id=None):
        """The next ack: ``(id, envelope)``; every frame before it must be strict JSON."""
        prefix = f"43{self.ns},"
        while True:
            frame = self.recv()
            assert frame, "connection closed while waiting for an ack"
            if frame.startswith(prefix):
                body = frame[len(prefix):]
                digits = len(body) - len(body.lstrip("0123456789"))
                got, envelope = int(body[:digits]), _strict_loads(body[digits:])[0]
                if ack_id is None or got == ack_id:
                    return got, envelope

    def event(self, name):
        """The args of the next event *name* (strict JSON)."""
        prefix = f"42{self.ns},"
        while True:
            frame = self.recv()
            assert frame, f"connection closed while waiting for {name}"
            if frame.startswith(prefix):
                data = _strict_loads(frame[len(prefix):])
                if data[0] == name:
                    return data[1:]

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()


@pytest.fixture
def raw():
    made = []

    def make(server, namespace=NS):
        conn = Raw(server, namespace)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def _handler_greenlets(server):
    """Live greenlets running handler calls of *server*'s socket.io server.

    Found by their frames (any greenlet, raw or gevent's, suspended inside
    the adapter's ``_run_event`` for this server), not by sbio's own
    bookkeeping, so a greenlet sbio forgot still counts.
    """
    sio = server.sio
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and not obj.dead:
            frame = obj.gr_frame
            while frame is not None:
                if (frame.f_code.co_name == "_run_event"
                        and frame.f_locals.get("self") is sio):
                    count += 1
                    break
                frame = frame.f_back
    return count


def _wait_for(predicate, what, timeout=10):
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.02)


# -- item 3: subscription size --------------------------------------------------------


def _subscribe(conn, ack_id, sub_id, event, *args):
    conn.call(ack_id, "sbio:subscribe", json.dumps({"id": sub_id, "event": event,
                                                    "args": list(args)}))
    return conn.ack(ack_id)[1]


def test_subscription_arguments_are_bounded_in_bytes_by_default(sbio_server, raw, ns):
    # The attack: many subscriptions with large arguments pin memory for as long
    # as the connection lives. Default: 250,000 bytes of JSON per connection.
    server = sbio_server(ns)
    conn = raw(server)
    blob = "x" * 100_000
    answers = [_subscribe(conn, i + 1, f"s{i}", "blob", blob) for i in range(6)]
    accepted = [a for a in answers if a["ok"]]
    assert len(accepted) == 2, answers
    refused = answers[2]
    assert refused["error"]["code"] == "bad_request"
    assert "250000" in refused["error"]["message"], refused
    broadcaster = server.live.broadcaster(NS)
    stored = sum(len(json.dumps(sub.args)) for subs in broadcaster.by_sid.values()
                 for sub in subs.values())
    assert stored <= 250_000


def test_subscription_bytes_limit_is_a_config_key_and_replacing_frees_room(
        sbio_server, raw, ns):
    server = sbio_server(ns, config=_config(broadcaster__max_subscription_bytes=10_000))
    conn = raw(server)
    assert _subscribe(conn, 1, "a", "blob", "x" * 6000)["ok"]
    refused = _subscribe(conn, 2, "b", "blob", "y" * 6000)
    assert refused["error"]["code"] == "bad_request"
    assert "10000" in refused["error"]["message"]
    # the same id again replaces "a": its bytes no longer count
    assert _subscribe(conn, 3, "a", "blob", "x" * 9000)["ok"]
    assert _subscribe(conn, 4, "a", "blob", "z")["ok"]
    assert _subscribe(conn, 5, "b", "blob", "y" * 6000)["ok"]


def test_max_subscriptions_is_a_config_key(sbio_server, raw, ns):
    server = sbio_server(ns, config=_config(broadcaster__max_subscriptions=3))
    conn = raw(server)
    for i in range(3):
        assert _subscribe(conn, i + 1, f"s{i}", "blob", "x")["ok"]
    refused = _subscribe(conn, 9, "s9", "blob", "x")
    assert refused["error"]["code"] == "bad_request"
    assert "limit 3" in refused["error"]["message"]


# -- item 4: calls in flight, handler greenlets, rate limits ---------------------------


def test_calls_in_flight_are_bounded_and_refused_without_a_greenlet(sbio_server, raw, ns):
    server = sbio_server(ns, config=_config(server__max_calls_in_flight=5))
    conn = raw(server)
    for i in range(1, 41):
        conn.call(i, "block")
    refused = [conn.ack()[1] for _ in range(35)]
    assert all(e["error"]["code"] == "rate_limited" for e in refused), refused
    assert "5" in refused[0]["error"]["message"]
    _wait_for(lambda: ns.started == 5, "the 5 admitted calls to start")
    assert _handler_greenlets(server) <= 5
    # un-acked past the limit: the sbio:error push
    conn.emit("block")
    assert conn.event("sbio:error")[0]["code"] == "rate_limited"
    # the ones in flight finish and answer; then there is room again
    ns.release.set()
    done = [conn.ack()[1] for _ in range(5)]
    assert done == [{"ok": True, "data": "released"}] * 5
    conn.call(99, "echo", "1")
    assert conn.ack(99)[1] == {"ok": True, "data": [1]}


def test_handler_greenlets_end_when_the_connection_closes(sbio_server, raw, ns):
    # The attack: 20,000 calls of a blocking handler, then a disconnect, left
    # 20,000 greenlets. 1,200 show it with the defaults: 256 run, the rest are
    # refused (fewer than the 1,000 refusals that would close the connection).
    server = sbio_server(ns)
    before = _handler_greenlets(server)
    conn = raw(server)
    for _ in range(1200):
        conn.emit("block")
    _wait_for(lambda: ns.started >= 256, "the calls to start")
    gevent.sleep(0.3)
    running = _handler_greenlets(server) - before
    assert running == ns.started <= 256
    conn.close()
    _wait_for(lambda: _handler_greenlets(server) == before, "the handler greenlets to end")
    # ended with GreenletExit (so a `with Session()` in the handler rolls back)
    assert ns.exited == ns.started


def test_leaving_a_namespace_ends_its_handler_greenlets(sbio_server, raw, ns):
    server = sbio_server(ns)
    before = _handler_greenlets(server)
    conn = raw(server)
    for _ in range(10):
        conn.emit("block")
    _wait_for(lambda: ns.started == 10, "the calls to start")
    conn.send(f"41{NS},")
    _wait_for(lambda: _handler_greenlets(server) == before, "the handler greenlets to end")
    assert ns.exited == 10


def test_per_connection_rate_limit(sbio_server, raw, ns):
    server = sbio_server(ns, config=_config(server__rate_limit=1, server__rate_limit_burst=10))
    conn = raw(server)
    for i in range(1, 31):
        conn.call(i, "echo", str(i))
    answers = dict(conn.ack() for _ in range(30))
    ok = [i for i, e in answers.items() if e["ok"]]
    limited = [i for i, e in answers.items() if not e["ok"]]
    assert 10 <= len(ok) <= 12, answers
    assert all(answers[i]["error"]["code"] == "rate_limited" for i in limited)
    conn.emit("echo", "1")
    assert conn.event("sbio:error")[0]["code"] == "rate_limited"
    # another connection has its own bucket
    other = raw(server)
    other.call(1, "echo", "1")
    assert other.ack(1)[1]["ok"]


def test_rate_limit_decorator_per_handler(sbio_server, raw):
    import sbio

    class Throttled(Namespace):
        name = NS

        @sbio.rate_limit(0.1, burst=2)  # refills one call in 10 s
        def on_guess(self, word):
            return word == "swordfish"

        def on_echo(self, value):
            return value

    assert "rate_limit" in sbio.__all__
    server = sbio_server(Throttled)
    conn = raw(server)
    for i in range(1, 6):
        conn.call(i, "guess", '"x"')
    answers = dict(conn.ack() for _ in range(5))
    assert [answers[i]["ok"] for i in range(1, 6)] == [True, True, False, False, False]
    assert answers[3]["error"]["code"] == "rate_limited"
    conn.call(6, "echo", "1")  # other handlers are not limited
    assert conn.ack(6)[1] == {"ok": True, "data": 1}
    second = raw(server)  # nor other connections
    second.call(1, "guess", '"swordfish"')
    assert second.ack(1)[1] == {"ok": True, "data": True}


def test_rate_limit_decorator_counts_subscriptions(sbio_server, raw):
    # sbio:subscribe runs the handler, so it takes from the handler's bucket:
    # a client cannot dodge @rate_limit by subscribing over and over.
    import sbio

    class Throttled(Namespace):
        name = NS

        @sbio.rate_limit(0.1, burst=2)
        @subscribes("price")
        def on_quote(self, symbol):
            return {"symbol": symbol}

    server = sbio_server(Throttled)
    conn = raw(server)
    conn.call(1, "quote", '"A"')
    for i in range(2, 5):
        conn.call(i, "sbio:subscribe", json.dumps({"id": f"s{i}", "event": "quote",
                                                   "args": ["A"]}))
    answers = dict(conn.ack() for _ in range(4))
    assert [answers[i]["ok"] for i in range(1, 5)] == [True, True, False, False], answers
    assert answers[3]["error"]["code"] == "rate_limited"
    assert "quote" in answers[3]["error"]["message"]


def test_sustained_abuse_closes_the_connection(sbio_server, raw, ns, sbio_live_client):
    server = sbio_server(ns, config=_config(server__rate_limit=5, server__rate_limit_burst=5,
                                            server__rate_limit_close_after=50))
    bystander = sbio_live_client(server, NS)
    conn = raw(server)
    closed = False
    with gevent.Timeout(20, AssertionError("the flooding connection was not closed")):
        for i in range(1, 2001):
            try:
                conn.emit("echo", "1")
            except (websocket.WebSocketException, OSError):
                closed = True
                break
            if i % 100 == 0:
                gevent.sleep(0.01)
        while not closed:
            frame = conn.recv()
            if frame == "" or frame.startswith("1"):  # socket closed / engine.io close
                closed = True
    assert bystander.call("echo", 1) == [1]


# -- item 6: JSON hygiene and log amplification ----------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_or_infinity_in_a_payload_is_bad_request(sbio_server, raw, ns, constant):
    server = sbio_server(ns)
    conn = raw(server)
    conn.call(1, "echo", f"[1,{constant}]")
    envelope = conn.ack(1)[1]
    assert envelope["ok"] is False and envelope["error"]["code"] == "bad_request", envelope
    conn.emit("echo", constant)
    assert conn.event("sbio:error")[0]["code"] == "bad_request"
    conn.call(2, "echo", "1.5")  # the connection stays usable
    assert conn.ack(2)[1] == {"ok": True, "data": [1.5]}


def test_nan_in_a_result_is_internal_and_never_sent(sbio_server, raw, ns):
    server = sbio_server(ns)
    conn = raw(server)
    conn.call(1, "nan")
    envelope = conn.ack(1)[1]  # strict JSON, or this fails
    assert envelope["error"]["code"] == "internal", envelope
    conn.call(2, "emit_nan")
    assert conn.ack(2)[1]["error"]["code"] == "internal"
    assert not any("NaN" in f or "Infinity" in f for f in conn.frames)


def test_a_broadcast_with_infinity_reaches_nobody_and_peers_stay(sbio_server, raw, ns):
    server = sbio_server(ns)
    peer, sender = raw(server), raw(server)
    sender.call(1, "broadcast_inf")
    assert sender.ack(1)[1]["error"]["code"] == "internal"
    sender.call(2, "broadcast_ok")
    assert sender.ack(2)[1]["ok"]
    assert peer.event("news") == [{"value": 1}]  # the first news it gets is the good one
    assert not any("Infinity" in f for f in peer.frames + sender.frames)
    peer.call(1, "echo", "1")
    assert peer.ack(1)[1]["ok"]


def test_nan_in_a_subscription_result_is_internal(sbio_server, raw, ns):
    server = sbio_server(ns)
    conn = raw(server)
    envelope = _subscribe(conn, 1, "n", "live_nan")
    assert envelope["error"]["code"] == "internal", envelope
    assert not any("NaN" in f for f in conn.frames)


def test_payload_nesting_is_bounded(sbio_server, raw, ns):
    server = sbio_server(ns)  # default max_json_depth: 64
    conn = raw(server)
    ok = json.dumps(_nested(60))
    conn.call(1, "echo", ok)
    assert conn.ack(1)[1]["ok"]
    conn.call(2, "echo", json.dumps(_nested(100)))
    envelope = conn.ack(2)[1]
    assert envelope["error"]["code"] == "bad_request", envelope
    assert "64" in envelope["error"]["message"]
    conn.call(3, "echo", "[" * 50_000 + "]" * 50_000)  # deeper than the json module goes
    assert conn.ack(3)[1]["error"]["code"] == "bad_request"
    conn.send(f'42{NS},["echo",{json.dumps(_nested(100))}]')
    assert conn.event("sbio:error")[0]["code"] == "bad_request"


def test_max_json_depth_is_a_config_key(sbio_server, raw, ns):
    server = sbio_server(ns, config=_config(server__max_json_depth=8))
    conn = raw(server)
    conn.call(1, "echo", json.dumps(_nested(5)))
    assert conn.ack(1)[1]["ok"]
    conn.call(2, "echo", json.dumps(_nested(9)))
    assert conn.ack(2)[1]["error"]["code"] == "bad_request"


def _sbio_log(caplog):
    """The text of sbio's log records (python-socketio's and python-engineio's
    per-packet INFO lines left out: `sbio run` sets those loggers to WARNING)."""
    upstream = ("sbio.socketio", "sbio.engineio", "sbio.access")
    return [r.getMessage() + (r.exc_text or "") for r in caplog.records
            if r.name.startswith("sbio") and (r.name not in upstream
                                              or r.levelno >= logging.WARNING)]


def test_a_result_too_deep_to_encode_is_internal_with_an_ack(sbio_server, raw, ns, caplog):
    # python-socketio's data_is_binary recurses per level: ~489 levels raise
    # RecursionError while the ack is built.
    server = sbio_server(ns)
    conn = raw(server)
    caplog.set_level(logging.INFO)
    for i in range(1, 21):
        conn.call(i, "deep", "600")
        envelope = conn.ack(i)[1]
        assert envelope["error"]["code"] == "internal", envelope
    conn.call(99, "deep", "3")
    assert conn.ack(99)[1] == {"ok": True, "data": [[[]]]}
    logged = sum(map(len, _sbio_log(caplog)))
    assert logged < 5_000, f"{logged} bytes of log for 20 bad results"


def test_repeated_errors_are_logged_once_with_a_count(sbio_server, raw, ns, caplog):
    # 1 kB sent must not become 75 kB of log: 100 failing calls of 1 kB each,
    # 100 NaN payloads, then calls refused by the rate limit.
    server = sbio_server(ns, config=_config(server__rate_limit=1, server__rate_limit_burst=200,
                                            server__rate_limit_close_after=0))
    caplog.set_level(logging.INFO)
    conn = raw(server)
    blob = json.dumps("x" * 1000)
    for i in range(1, 101):
        conn.call(i, "crash", blob)
    for i in range(101, 201):
        conn.call(i, "echo", "NaN")
    for i in range(201, 401):
        conn.call(i, "echo", "1")
    answers = dict(conn.ack() for _ in range(400))
    assert {answers[i]["error"]["code"] for i in range(1, 101)} == {"internal"}
    assert {answers[i]["error"]["code"] for i in range(101, 201)} == {"bad_request"}
    assert {answers[i]["error"]["code"] for i in range(201, 401) if not answers[i]["ok"]} \
        == {"rate_limited"}
    conn.close()
    _wait_for(lambda: not server.dispatcher(NS).instances, "the disconnect")
    text = _sbio_log(caplog)
    logged = sum(map(len, text))
    assert logged < 10_000, f"{logged} bytes of log for 300+ bad messages: " + \
        repr([t[:200] for t in text[:20]])
    assert sum("handler bug" in t for t in text) == 1
    assert any("99" in t and "handler failed" in t for t in text), text
