"""Dispatch and the wire protocol, through the in-process client (real packets, no socket)."""
import logging

import gevent
import gevent.event
import pytest

from sbio import ConnectionRefused, Namespace, RpcError, SbioTimeoutError
from sbio.testing import CallError

release = gevent.event.Event()


class Things(Namespace):
    name = "/things"

    def on_connect(self, auth):
        if auth == {"token": "bad"}:
            raise ConnectionRefused("bad token", {"code": 401})
        if auth == {"token": "false"}:
            return False
        if auth == {"token": "crash"}:
            raise KeyError("oops")
        self.session["n"] = 0

    def on_echo(self, *args):
        return list(args)

    def on_add(self, a: int, b: int = 1):
        return a + b

    def on_incr(self):
        self.session["n"] += 1
        return self.session["n"]

    def on_crash(self):
        raise ValueError("the handler's own bug")

    def on_typeerror_inside(self, x):
        return len(x)  # a TypeError raised inside the handler is internal, not bad_request

    def on_refuse(self):
        raise RpcError("no_way", "you cannot do that")

    def on_slow(self):
        raise SbioTimeoutError("backend too slow")

    def on_unjsonable(self):
        return {"when": object()}

    def on_block(self):
        release.wait(5)
        return "released"

    def on_spawn_sleeper(self):
        self.session["job"] = self.spawn(gevent.sleep, 60)
        return "spawned"

    def on_join(self, room):
        self.enter_room(room)

    def on_shout(self, room, text, include_self: bool = True):
        self.broadcast("shout", text, room=room, include_self=include_self)

    def on_ask(self, question):
        return self.call("question", question, timeout=2)

    def on_kick(self):
        self.spawn(self.disconnect)

    def on_disconnect(self, reason):
        DISCONNECTS.append((self.sid, reason))


DISCONNECTS = []


def code_of(client, event, *args):
    with pytest.raises(CallError) as err:
        client.call(event, *args)
    return err.value.code


def test_ack_envelope_success(sbio_client):
    c = sbio_client(Things)
    assert c.call_envelope("echo", 1, "two", {"three": [3]}) == {
        "ok": True, "data": [1, "two", {"three": [3]}]}
    assert c.call_envelope("add", 2) == {"ok": True, "data": 3}


def test_session_is_per_connection(sbio_client):
    a, b = sbio_client(Things), sbio_client(Things)
    assert [a.call("incr"), a.call("incr"), b.call("incr")] == [1, 2, 1]


def test_error_codes(sbio_client):
    c = sbio_client(Things)
    assert code_of(c, "nope") == "not_found"
    assert code_of(c, "connect") == "bad_request"  # reserved by socket.io: never an event
    assert code_of(c, "sbio:nope") == "bad_request"  # sbio's own names
    assert code_of(c, "") == "bad_request"
    assert code_of(c, "x" * 129) == "bad_request"  # longer than any registered name
    assert code_of(c, "_private") == "not_found"  # any other name could have a handler
    assert code_of(c, "sp ace") == "not_found"
    assert code_of(c, "add") == "bad_request"  # too few arguments
    assert code_of(c, "add", 1, 2, 3) == "bad_request"  # too many
    assert code_of(c, "add", "1") == "bad_request"  # wrong kind
    assert code_of(c, "add", True) == "bad_request"  # bool is not an int
    assert code_of(c, "refuse") == "no_way"
    assert code_of(c, "slow") == "timeout"
    c.raise_server_errors = False
    assert code_of(c, "crash") == "internal"
    assert code_of(c, "typeerror_inside", 5) == "internal"
    assert code_of(c, "unjsonable") == "internal"


def test_error_messages_are_clear_and_carry_no_traceback(sbio_client):
    c = sbio_client(Things, raise_server_errors=False)
    assert c.call_envelope("add") == {"ok": False, "error": {
        "code": "bad_request",
        "message": "event 'add' takes 1 to 2 argument(s) (a, b), got 0"}}
    assert c.call_envelope("add", "x")["error"]["message"] == \
        "argument 'a' of event 'add' must be int, got str"
    crash = c.call_envelope("crash")
    assert crash == {"ok": False, "error": {"code": "internal",
                                            "message": "internal server error"}}
    assert c.call_envelope("refuse")["error"] == {"code": "no_way",
                                                  "message": "you cannot do that"}


def test_internal_error_logged_once_with_sid_namespace_event(sbio_client, caplog):
    c = sbio_client(Things, raise_server_errors=False)
    with caplog.at_level(logging.ERROR, logger="sbio"):
        c.call_envelope("crash")
    records = [r for r in caplog.records if r.exc_info]
    assert len(records) == 1
    text = records[0].getMessage()
    assert c.sid in text and "/things" in text and "crash" in text


def test_in_process_client_shows_the_server_exception(sbio_client):
    c = sbio_client(Things)
    with pytest.raises(CallError) as err:
        c.call("crash")
    assert err.value.code == "internal"
    assert isinstance(err.value.__cause__, ValueError)


def test_unacked_failure_pushes_sbio_error(sbio_client):
    c = sbio_client(Things, raise_server_errors=False)
    c.emit("nope")
    c.emit("add", "x")
    c.emit("crash")
    c.emit("echo", 1)  # success without ack: nothing comes back
    errors = [args[0] for args in [c.receive("sbio:error", count=3)] and c.received("sbio:error")]
    assert [(e["event"], e["code"]) for e in errors] == [
        ("nope", "not_found"), ("add", "bad_request"), ("crash", "internal")]
    assert c.call("echo") == []  # still serving
    assert len(c.received("sbio:error")) == 3


def test_malformed_packet_closes_the_connection_and_others_keep_serving(sbio_client):
    # issue 11 item 7: a packet that does not decode is a protocol violation
    # (socket.io's reference server closes); it used to get sbio:error
    c, other = sbio_client(Things), sbio_client(Things)
    c.send_raw('2/things,["echo", {bad json')
    assert not c.connected
    assert c.sid not in c.server.dispatcher("/things").instances
    assert other.call("echo", 1) == [1]


def test_connect_refusals(sbio_client):
    with pytest.raises(ConnectionRefused) as err:
        sbio_client(Things, auth={"token": "bad"})
    assert (err.value.message, err.value.data) == ("bad token", {"code": 401})
    with pytest.raises(ConnectionRefused) as err:
        sbio_client(Things, auth={"token": "false"})
    assert err.value.message == "Connection rejected by server"
    with pytest.raises(ConnectionRefused) as err:
        sbio_client(Things, auth={"token": "crash"})
    assert err.value.message == "Internal server error"
    # refused connections leave nothing behind
    ok = sbio_client(Things)
    assert list(ok.server.dispatcher("/things").instances) == [ok.sid]


def test_blocking_handler_does_not_block_other_connections(sbio_client):
    release.clear()
    slow, fast = sbio_client(Things), sbio_client(Things)
    pending = gevent.spawn(slow.call, "block")
    gevent.sleep(0.01)
    assert not pending.ready()
    assert fast.call("add", 1, 1) == 2  # answered while "block" is still running
    assert not pending.ready()
    release.set()
    assert pending.get(timeout=5) == "released"


def test_spawned_greenlets_die_on_disconnect(sbio_client):
    c = sbio_client(Things)
    c.call("spawn_sleeper")
    job = c.instance.session["job"]
    assert not job.dead
    c.disconnect()
    job.join(timeout=5)
    assert job.dead
    assert c.sid not in c.server.dispatcher("/things").instances


def test_disconnect_hook_and_server_side_disconnect(sbio_client):
    DISCONNECTS.clear()
    c = sbio_client(Things)
    c.call("kick")
    c.receive("disconnect")
    assert not c.connected
    # DISCONNECTS is the list the hook appends to, not a constant
    assert DISCONNECTS == [(c.sid, "server disconnect")]  # noqa: SIM300


def test_rooms_and_broadcast(sbio_client):
    a, b, outsider = sbio_client(Things), sbio_client(Things), sbio_client(Things)
    a.call("join", "r1")
    b.call("join", "r1")
    a.call("shout", "r1", "hello")
    assert b.receive("shout") == ["hello"]
    assert a.receive("shout") == ["hello"]
    a.call("shout", "r1", "quiet", False)
    assert b.receive("shout", count=2) == ["quiet"]
    assert a.received("shout") == [["hello"]]
    assert outsider.received("shout") == []


def test_server_to_client_call(sbio_client):
    c = sbio_client(Things)
    c.on("question", lambda q: f"answer to {q}")
    assert c.call("ask", "life") == "answer to life"


def test_server_to_client_call_times_out(sbio_client):
    c = sbio_client(Things)
    c.on("question", lambda q: gevent.sleep(10))
    assert code_of(c, "ask", "slowly") == "timeout"


def test_exception_handler_decorator_wraps_handlers_and_jobs(sbio_client):
    seen = []

    class Guarded(Things):
        name = "/guarded"

        def exception_handler_decorator(self, fn):
            def wrapper(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except ValueError as exc:
                    seen.append(str(exc))
                    raise RpcError("handled", str(exc)) from exc
            return wrapper

    c = sbio_client(Guarded)
    assert code_of(c, "crash") == "handled"
    assert seen == ["the handler's own bug"]
    assert c.call("add", 1) == 2


@pytest.mark.parametrize("packet", [
    '2/things,[]', '2/things,{"a": 1}', '2/things,7[]', '2/things,"just a string"',
    "4", "4/things,", "9", "3/things,5{}",
])
def test_decodable_but_malformed_packets_close_the_connection(sbio_client, caplog, packet):
    # issue 11 item 7: events without a name or with a non-array payload, a
    # CONNECT_ERROR or an unknown packet type from a client, an ACK whose
    # payload is not an array all break the protocol; the reference server
    # closes on each (they used to get bad_request or be dropped)
    c, other = sbio_client(Things), sbio_client(Things)
    with caplog.at_level(logging.WARNING):
        c.send_raw(packet)
    assert not c.connected
    assert other.call("echo", 1) == [1]
    assert not [r for r in caplog.records if r.exc_info]


def test_acks_nobody_waits_for_are_dropped_with_a_warning(sbio_client, caplog):
    c = sbio_client(Things)
    with caplog.at_level(logging.WARNING):
        for raw in ("3/things,0[1]", "3/things,[1]", "3/things,12345[1]"):
            c.send_raw(raw)
    assert not [r for r in caplog.records if r.exc_info]
    assert c.call("echo", 2) == [2]


def test_client_ack_with_id_zero_does_not_break_server_calls(sbio_client):
    c = sbio_client(Things)
    c.on("question", lambda q: "first")
    assert c.call("ask", "one") == "first"
    c.send_raw('3/things,0["forged"]')  # python-socketio keeps its id counter under 0
    c.on("question", lambda q: "second")
    assert c.call("ask", "two") == "second"


def test_second_connect_to_the_same_namespace_is_refused_with_a_message(sbio_client):
    c = sbio_client(Things)
    c.send_raw("0/things,")
    assert c.receive("connect_error") == [{"message": "Already connected to this namespace"}]
    assert c.call("echo", 3) == [3]  # the first connection is untouched


def test_none_is_accepted_for_annotated_parameters_defaulting_to_none(sbio_client):
    class Opt(Namespace):
        name = "/opt"

        # the implicit Optional (`dict = None`) is the pattern under test
        def on_find(self, filters: dict = None, limit: int = 10):  # noqa: RUF013
            return [filters, limit]

    c = sbio_client(Opt)
    assert c.call("find", None) == [None, 10]
    assert c.call("find", {"a": 1}, 5) == [{"a": 1}, 5]
    assert code_of(c, "find", None, None) == "bad_request"  # limit's default is not None


@pytest.mark.parametrize("body, problem", [
    ("@staticmethod\n    def on_x(a):\n        return a", "on_x is a staticmethod"),
    ("@classmethod\n    def on_x(cls):\n        return 1", "on_x is a classmethod"),
    ("async def on_x(self):\n        return 1", "on_x is 'async def'"),
])
def test_handlers_that_cannot_be_dispatched_are_refused_when_hosted(sbio_server, body, problem):
    scope = {"Namespace": Namespace}
    exec(f"class Odd(Namespace):\n    name = '/odd'\n    {body}\n", scope)
    with pytest.raises(TypeError, match=problem):
        sbio_server(scope["Odd"])


def test_greenlets_spawned_in_a_refused_on_connect_are_killed(sbio_client):
    jobs = []

    class Picky(Namespace):
        name = "/picky"

        def on_connect(self, auth):
            jobs.append(self.spawn(gevent.sleep, 30))
            if auth == "no":
                raise ConnectionRefused("no")
            if auth == "false":
                return False
            if auth == "crash":
                raise RuntimeError("bug")

    for auth in ("no", "false", "crash"):
        with pytest.raises(ConnectionRefused):
            sbio_client(Picky, auth=auth, raise_server_errors=False)
    gevent.joinall(jobs, timeout=5)
    assert len(jobs) == 3 and all(job.dead for job in jobs)
