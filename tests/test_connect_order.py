"""Protocol order at connect (issue 13): the CONNECT acknowledgement first, then what
``on_connect`` emitted; a refused connection gets none of it.

Raw Engine.IO / Socket.IO frames over a real websocket (and long-polling),
including the connect cases of the Socket.IO protocol's test suite
(socket.io-protocol, ``test-suite/test-suite.js``, "connect"), whose server
emits ``auth`` with the handshake's auth payload on connection.
"""
import json

import gevent
import pytest

from sbio import ConnectionRefused, Namespace

from test_protocol_strict import Closed, Polling, RawWebSocket, _config


class Main(Namespace):
    """The protocol suite's server: emits ``auth`` on connection."""

    name = "/"

    def on_connect(self, auth):
        self.emit("auth", auth or {})


class Custom(Main):
    name = "/custom"


class Busy(Namespace):
    """Emits before and after yielding, from a greenlet, and broadcasts to itself."""

    name = "/busy"

    def on_connect(self, auth):
        self.emit("first", 1)
        self.spawn(self.emit, "from a greenlet", 2)
        gevent.sleep(0.01)  # the greenlet runs while on_connect still runs
        self.broadcast("everyone", 3)
        self.emit("binary", b"\x01\x02")
        self.emit("last", 4)


class Refusing(Namespace):
    name = "/refuse"

    def on_connect(self, auth):
        self.emit("secret", "never sent")
        self.broadcast("secret", "never sent either")
        if auth == {"mode": "false"}:
            return False
        if auth == {"mode": "crash"}:
            raise RuntimeError("on_connect bug")
        raise ConnectionRefused("go away", {"code": 403})


class Caller(Namespace):
    name = "/caller"

    def on_connect(self, auth):
        try:
            self.call("question")
        except Exception as exc:  # the error itself is what is tested
            self.emit("call failed", type(exc).__name__, str(exc))


@pytest.fixture
def server(sbio_server):
    return sbio_server(Main, Custom, Busy, Refusing, Caller, config=_config())


def _frames(ws, count):
    """The next *count* socket.io frames (pings answered, not counted)."""
    return [ws.recv() for _ in range(count)]


def _connect_answer(frame, prefix):
    assert frame.startswith(prefix), frame
    handshake = json.loads(frame[len(prefix):])
    assert set(handshake) == {"sid"} and isinstance(handshake["sid"], str), frame
    return handshake["sid"]


# -- the protocol suite's connect cases -------------------------------------------------


def test_connect_to_the_main_namespace(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40")
    connect, auth = _frames(ws, 2)
    _connect_answer(connect, "40")
    assert auth == '42["auth",{}]'
    ws.close()


def test_connect_to_the_main_namespace_with_a_payload(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send('40{"token":"123"}')
    connect, auth = _frames(ws, 2)
    _connect_answer(connect, "40")
    assert auth == '42["auth",{"token":"123"}]'
    ws.close()


def test_connect_to_a_custom_namespace(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/custom,")
    connect, auth = _frames(ws, 2)
    _connect_answer(connect, "40/custom,")
    assert auth == '42/custom,["auth",{}]'
    ws.close()


def test_connect_to_a_custom_namespace_with_a_payload(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send('40/custom,{"token":"abc"}')
    connect, auth = _frames(ws, 2)
    _connect_answer(connect, "40/custom,")
    assert auth == '42/custom,["auth",{"token":"abc"}]'
    ws.close()


def test_connect_to_an_unknown_namespace(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/random")
    assert ws.recv() == '44/random,{"message":"Invalid namespace"}'
    ws.close()


def test_connect_with_an_invalid_handshake_closes(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("4abc")
    assert ws.wait_closed()


# -- what on_connect emits ----------------------------------------------------------------


def test_every_emit_of_on_connect_follows_the_connect(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/busy,")
    frames = _frames(ws, 5)
    _connect_answer(frames[0], "40/busy,")
    assert frames[1:] == ['42/busy,["first",1]', '42/busy,["from a greenlet",2]',
                          '42/busy,["everyone",3]',
                          '451-/busy,["binary",{"_placeholder":true,"num":0}]']
    assert ws.recv() == '42/busy,["last",4]'
    assert ws.frames[-2] == b"\x01\x02"  # the attachment followed its packet
    ws.close()


def test_a_second_namespace_is_held_while_the_first_is_served(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send('40{"token":"1"}')
    _connect_answer(ws.recv(), "40")
    assert ws.recv() == '42["auth",{"token":"1"}]'
    ws.send('40/custom,{"token":"2"}')
    _connect_answer(ws.recv(), "40/custom,")
    assert ws.recv() == '42/custom,["auth",{"token":"2"}]'
    ws.close()


@pytest.mark.parametrize("auth", [None, '{"mode":"false"}', '{"mode":"crash"}'])
def test_a_refused_connection_gets_none_of_the_held_emits(server, auth):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/refuse," + (auth or ""))
    refusal = ws.recv()
    assert refusal.startswith('44/refuse,{"message":'), refusal
    if auth is None:
        assert json.loads(refusal[len("44/refuse,"):]) == {"message": "go away",
                                                             "data": {"code": 403}}
    # Anything held would have been sent before the next answer on this socket.
    ws.send("40/custom,")
    _connect_answer(ws.recv(), "40/custom,")
    assert ws.recv() == '42/custom,["auth",{}]'
    assert not [f for f in ws.frames if isinstance(f, str) and "secret" in f], ws.frames
    ws.close()


def test_call_in_on_connect_is_a_clear_error_not_a_timeout(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/caller,")
    _connect_answer(ws.recv(), "40/caller,")
    name, kind, message = json.loads(ws.recv()[len("42/caller,"):])
    assert (name, kind) == ("call failed", "SbioError")
    assert "on_connect" in message and "spawn" in message
    ws.close()


def test_connect_order_over_polling(server):
    poll = Polling(server)
    assert poll.post('40/custom,{"token":"p"}').status_code == 200
    packets = poll.collect(2, lambda p: p.startswith(("40/custom,", "42/custom,")))
    assert len(packets) == 2, packets
    _connect_answer(packets[0], "40/custom,")
    assert packets[1] == '42/custom,["auth",{"token":"p"}]'


class BusyText(Busy):
    name = "/busy-text"

    def emit(self, event, *args, to=None):
        if event != "binary":  # the in-process client takes no binary packets
            super().emit(event, *args, to=to)


def test_in_process_client_gets_every_held_emit(sbio_client):
    c = sbio_client(BusyText)
    assert [name for name, _ in c.received()] == ["first", "from a greenlet", "everyone", "last"]


def test_closed_connection_while_on_connect_runs_leaves_nothing_held(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/busy,")
    ws.close()  # gone while on_connect sleeps
    sio = server.sio
    for _ in range(500):  # count-based: until the server saw the close
        if not sio._held and not sio.eio.sockets:
            break
        gevent.sleep(0.01)
    assert not sio._held
    with pytest.raises(Closed):
        ws.recv(timeout=1)


class Flood(Namespace):
    name = "/flood"

    def on_connect(self, auth):
        for i in range(200):
            self.emit("n", i)


def test_what_on_connect_emits_is_bounded_like_the_outbound_queue(sbio_server, caplog):
    server = sbio_server(Flood, config=_config(max_outbound_messages=50))
    ws = RawWebSocket(server, namespace=None)
    ws.send("40/flood,")
    # the held packets overflow the outbound queue: a slow consumer, dropped
    assert ws.wait_closed(timeout=10)
    held = [r for r in caplog.records if "while on_connect ran" in r.getMessage()]
    assert len(held) == 1 and "server.max_outbound_messages (50)" in held[0].getMessage()
    assert any("dropping slow consumer" in r.getMessage() for r in caplog.records)
    assert not server.sio._held
