"""The in-process client (``sbio_client``) sees what a real client sees.

Each behaviour is checked on a :class:`~sbio.testing.LocalClient` and, where
it is about what the wire carries, against a real server and python-socketio's
client (``sbio_server`` + ``sbio_live_client``) too.
"""
import gevent
import gevent.event
import pytest

from sbio import Namespace
from sbio.testing import CallError

BLOB = bytes(range(256))
#: set when on_leave_later runs (the call is in flight on the server)
LEAVING = gevent.event.Event()


class Binary(Namespace):
    name = "/binary"

    def on_blob(self):
        return BLOB

    def on_nested(self):
        return {"head": b"\x00\x01", "items": [1, b"\xff", {"tail": BLOB}]}

    def on_echo(self, value):
        return value

    def on_push(self):
        self.emit("blob", BLOB, {"also": b"\x02"})

    def on_ask(self):
        return self.call("give", b"\x03", timeout=5)

    def on_leave(self):
        self.disconnect()
        return "you will never read this"

    def on_leave_later(self):
        LEAVING.set()
        self.spawn(self._leave_soon)
        gevent.sleep(60)  # killed by the disconnect: the call never answers

    def _leave_soon(self):
        gevent.sleep(0.01)
        self.disconnect()

    def on_wait(self):
        LEAVING.set()
        gevent.sleep(60)  # killed by the disconnect


# -- binary data ----------------------------------------------------------------------


def test_a_handler_returning_bytes_is_delivered(sbio_client):
    c = sbio_client(Binary)
    assert c.call("blob") == BLOB
    assert c.call_envelope("blob") == {"ok": True, "data": BLOB}
    assert c.call("nested") == {"head": b"\x00\x01", "items": [1, b"\xff", {"tail": BLOB}]}
    # and the client can go on: no packet is left half-assembled
    assert c.call("echo", "text") == "text"


def test_bytes_go_both_ways(sbio_client):
    c = sbio_client(Binary)
    assert c.call("echo", {"up": b"\x00" * 10}) == {"up": b"\x00" * 10}


def test_binary_events_and_server_calls_are_delivered(sbio_client):
    c = sbio_client(Binary)
    c.call("push")
    assert c.receive("blob") == [BLOB, {"also": b"\x02"}]
    c.on("give", lambda data: data + b"\x04")
    assert c.call("ask") == b"\x03\x04"


def test_a_real_client_gets_the_same_bytes(sbio_server, sbio_live_client):
    c = sbio_live_client(sbio_server(Binary), "/binary")
    assert c.call("blob") == BLOB
    assert c.call("nested") == {"head": b"\x00\x01", "items": [1, b"\xff", {"tail": BLOB}]}
    c.call("push")
    assert c.receive("blob") == [BLOB, {"also": b"\x02"}]


# -- a disconnect ends the calls in flight ---------------------------------------------


def test_the_ack_of_a_handler_that_disconnected_is_not_accepted(sbio_client):
    c = sbio_client(Binary)
    with pytest.raises(CallError) as err:
        c.call("leave")
    assert err.value.code == "disconnected"
    assert "'leave'" in err.value.message
    assert not c.connected
    assert c.received("disconnect") == [["server disconnect"]]
    assert c.received("sbio:error") == []


def test_a_call_in_flight_ends_when_the_server_disconnects(sbio_client):
    c = sbio_client(Binary)
    with pytest.raises(CallError) as err:
        c.call("leave_later", timeout=30)  # the disconnect ends it, not the timeout
    assert err.value.code == "disconnected"
    assert c.received("disconnect") == [["server disconnect"]]


def test_a_call_in_flight_ends_when_the_client_disconnects(sbio_client):
    c = sbio_client(Binary)
    LEAVING.clear()
    pending = gevent.spawn(c.call, "wait", timeout=30)
    assert LEAVING.wait(10)
    c.disconnect()
    with pytest.raises(CallError) as err:
        pending.get(timeout=10)
    assert err.value.code == "disconnected"


def test_a_real_client_never_receives_that_ack(sbio_server, sbio_live_client):
    # python-socketio's client drops the Engine.IO connection at the
    # namespace DISCONNECT, so the ack sent after it never arrives;
    # sbio.Client (under LiveClient) fails the call as "disconnected" at
    # once, as sbio.js and the in-process client do.
    c = sbio_live_client(sbio_server(Binary), "/binary")
    with pytest.raises(CallError) as info:
        c.call("leave", timeout=3)
    assert info.value.code == "disconnected"
    assert c.receive("disconnect") == ["server disconnect"]
