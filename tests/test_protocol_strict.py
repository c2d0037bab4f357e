"""The inbound packet path under hostile clients: raw Engine.IO frames on a real socket.

Issue 11, items 1 (binary attachments), 5 (polling) and 7 (strict protocol).
Every test speaks raw Engine.IO (``websocket-client`` on
``/socket.io/?EIO=4&transport=websocket``, or HTTP long-polling with
``requests``) and sends exactly what an attacker would. socket.io's reference
server closes the connection on each protocol violation checked here; so must
sbio. Well-formed events with a bad name or bad arguments keep their envelope.
"""
import contextlib
import json
import logging
import struct
import time

import gevent
import pytest
import requests
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbio import Namespace, subscribes
from sbio.config import load_sbio_config

WS_PATH = "/socket.io/?EIO=4&transport=websocket"
POLL_PATH = "/socket.io/?EIO=4&transport=polling"
CONNECT_TIMEOUT = 1.0
MAX_ATTACHMENTS = 3

#: every call that reached a handler of Board, in order
CALLS = []


class Board(Namespace):
    name = "/board"

    def on_login(self, user: str, password: str = ""):
        CALLS.append(("login", user))
        return {"user": user}

    def on_echo(self, *args):
        CALLS.append(("echo", len(args)))
        return len(args)  # never bytes: no binary frame ever goes back

    def on_size(self, blob):
        CALLS.append(("size", len(blob)))
        return len(blob)

    @subscribes("counter")
    def on_counter(self, start: int = 0):
        return start


def _config(**overrides):
    values = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "sbio-tests",
              "server.connect_timeout": CONNECT_TIMEOUT,
              "server.max_attachments": MAX_ATTACHMENTS}
    values.update({f"server.{key}": value for key, value in overrides.items()})
    return load_sbio_config(overrides=values)


@pytest.fixture
def server(sbio_server):
    CALLS.clear()
    return sbio_server(Board, config=_config())


class Closed(Exception):
    """The server closed the connection."""


class RawWebSocket:
    """A raw Engine.IO websocket client that records every frame it receives."""

    def __init__(self, server, namespace="/board", timeout=5):
        url = server.url.replace("http://", "ws://") + WS_PATH
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.frames = []
        self.close_code = None
        self.closed = False
        opening = self.ws.recv()
        assert opening.startswith("0{"), opening
        self.frames.append(opening)
        if namespace is not None:
            self.send(f"40{namespace},")
            answer = self.recv()
            assert answer.startswith(f"40{namespace},{{"), answer

    def send(self, text):
        try:
            self.ws.send(text)
        except (OSError, websocket.WebSocketException):
            self.closed = True
            raise Closed from None

    def send_binary(self, data):
        try:
            self.ws.send_binary(data)
        except (OSError, websocket.WebSocketException):
            self.closed = True
            raise Closed from None

    def recv(self, timeout=5):
        """The next text frame that is not a ping (answered); Closed when the server closed."""
        self.ws.settimeout(timeout)
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                raise TimeoutError(f"nothing from the server within {timeout}s") from None
            except (OSError, websocket.WebSocketConnectionClosedException):
                self.closed = True
                raise Closed from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.closed = True
                if len(frame.data) >= 2:
                    self.close_code = struct.unpack("!H", frame.data[:2])[0]
                raise Closed
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                continue
            data = frame.data
            if opcode == websocket.ABNF.OPCODE_BINARY:
                self.frames.append(bytes(data))
                continue
            text = data.decode("utf-8")
            self.frames.append(text)
            if text == "2":
                self.send("3")
                continue
            if text == "1":  # Engine.IO CLOSE: the close frame follows
                continue
            return text

    def wait_closed(self, timeout=3):
        """True when the server closes the connection within *timeout* s (frames are kept)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.recv(timeout=left)
        except Closed:
            return True
        except TimeoutError:
            return False

    def close(self):
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)


def _allowed(frame):
    """Only Engine.IO control packets, CONNECT / CONNECT_ERROR / DISCONNECT, envelopes.

    Any namespace: the frames under test name namespaces of their own, and
    the server answers each in the namespace it was addressed to.
    """
    if not isinstance(frame, str):
        return False
    if "Traceback" in frame:
        return False
    if frame in ("1", "2", "3", "6") or frame.startswith("0{"):
        return True
    if not frame.startswith("4"):
        return False
    body = frame[1:]
    kind, rest = body[:1], body[1:]
    if rest.startswith("/"):  # skip the namespace
        rest = rest.partition(",")[2]
    if kind == "0":  # CONNECT answer
        return isinstance(json.loads(rest).get("sid"), str)
    if kind == "1":
        return rest == ""
    if kind == "4":  # CONNECT_ERROR
        data = json.loads(rest)
        return isinstance(data, dict) and isinstance(data.get("message"), str)
    if kind == "3":  # ACK: one envelope
        digits = len(rest) - len(rest.lstrip("0123456789"))
        assert digits, frame
        (envelope,) = json.loads(rest[digits:])
        return _is_envelope(envelope)
    if kind == "2":  # only sbio:error pushes (this namespace emits nothing else)
        event, body = json.loads(rest)
        return event == "sbio:error" and set(body) == {"event", "code", "message"}
    return False


def _is_envelope(envelope):
    if not isinstance(envelope, dict) or envelope.get("ok") not in (True, False):
        return False
    if envelope["ok"]:
        return set(envelope) == {"ok", "data"}
    error = envelope.get("error")
    return set(envelope) == {"ok", "error"} and isinstance(error, dict) and \
        isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


def _ack(frame, namespace="/board"):
    """(id, envelope) of an ACK frame, else None."""
    prefix = f"43{namespace},"
    if not frame.startswith(prefix):
        return None
    rest = frame[len(prefix):]
    digits = len(rest) - len(rest.lstrip("0123456789"))
    return int(rest[:digits]), json.loads(rest[digits:])[0]


def _works(ws, ack_id=900):
    """The connection still answers a plain call."""
    ws.send(f'42/board,{ack_id}["echo","still","here"]')
    while True:
        frame = ws.recv()
        ack = _ack(frame)
        if ack and ack[0] == ack_id:
            return ack[1] == {"ok": True, "data": 2}


# -- item 1: binary attachments -------------------------------------------------------


def test_more_attachments_than_max_attachments_closes_at_once(server):
    ws = RawWebSocket(server)
    ws.send(f'45{MAX_ATTACHMENTS + 1}-/board,1["login",{{"_placeholder":true,"num":0}}]')
    assert ws.wait_closed(), "an over-limit attachment count must close the connection"
    assert all(_allowed(f) for f in ws.frames)
    assert not CALLS


def test_huge_announced_attachment_count_closes_before_any_binary_frame(server, sbio_live_client):
    bystander = sbio_live_client(server, "/board")
    ws = RawWebSocket(server)
    ws.send('459999999999-/board,["login",{"_placeholder":true,"num":0}]')
    assert ws.wait_closed(), "459999999999-... must close the connection"
    assert bystander.call("echo", 1) == 1


def test_attachments_over_max_message_size_in_total_close_after_at_most_two_frames(server):
    # each frame is under server.max_message_size (1,000,000), two together are over it
    ws = RawWebSocket(server)
    ws.send(f'45{MAX_ATTACHMENTS}-/board,1["size",{{"_placeholder":true,"num":0}}]')
    sent = 0
    closed = False
    for _ in range(MAX_ATTACHMENTS):
        try:
            ws.send_binary(b"x" * 600_000)
        except Closed:
            closed = True
            break
        sent += 1
        if ws.wait_closed(timeout=1.5):
            closed = True
            break
    assert closed, f"still open after {sent} frames of 600,000 bytes (1.8 MB announced)"
    assert sent <= 2
    assert not CALLS


def test_bad_binary_placeholder_closes_instead_of_wedging(server, sbio_live_client):
    bystander = sbio_live_client(server, "/board")
    ws = RawWebSocket(server)
    ws.send('451-/board,1["size",{"_placeholder":true,"num":7}]')
    with contextlib.suppress(Closed):
        ws.send_binary(b"abc")
    assert ws.wait_closed(), "a placeholder for attachment 7 of 1 must close the connection"
    assert all(_allowed(f) for f in ws.frames)
    assert bystander.call("echo") == 0


@pytest.mark.parametrize("frames", [
    # text while an attachment is still expected
    ['452-/board,1["size",{"_placeholder":true,"num":0}]', b"abc", '42/board,2["echo"]'],
    # a binary frame nobody announced
    [b"\x00\x01 unannounced"],
    # a binary event announcing zero attachments
    ['450-/board,1["echo"]', b"abc"],
    # a placeholder that is not an attachment index
    ['451-/board,1["size",{"_placeholder":true,"num":"0"}]', b"abc"],
    ['451-/board,1["size",{"_placeholder":true,"num":-1}]', b"abc"],
], ids=["text-while-pending", "unannounced-binary", "zero-attachments", "num-string",
        "num-negative"])
def test_attachment_count_lies_close_the_connection(server, frames):
    ws = RawWebSocket(server)
    try:
        for frame in frames:
            (ws.send_binary if isinstance(frame, bytes) else ws.send)(frame)
    except Closed:
        pass
    assert ws.wait_closed()
    assert all(_allowed(f) for f in ws.frames)


def test_a_well_formed_binary_call_still_works(server):
    ws = RawWebSocket(server)
    ws.send('451-/board,5["size",{"_placeholder":true,"num":0}]')
    ws.send_binary(b"x" * 1000)
    frame = ws.recv()
    assert _ack(frame) == (5, {"ok": True, "data": 1000})
    assert _works(ws)
    ws.close()


# -- item 7: strict protocol -----------------------------------------------------------

VIOLATIONS = [
    pytest.param(["4abc"], id="4abc-unknown-packet-type"),
    pytest.param(["47/board,"], id="unknown-packet-type-7"),
    pytest.param(["4"], id="empty-socketio-packet"),
    pytest.param(["42{}"], id="42{}-default-namespace"),
    pytest.param(['42/board,{"a":1}'], id="event-object-payload"),
    pytest.param(['42/board,"just a string"'], id="event-string-payload"),
    pytest.param(['42/board,abc["echo"]'], id="42abc[...]-garbage-before-payload"),
    pytest.param(['42/board,["echo", {oops'], id="event-json-does-not-parse"),
    pytest.param(["42/board,[]"], id="event-without-a-name"),
    pytest.param(["42/board,7[]"], id="event-with-ack-without-a-name"),
    pytest.param(["42/board,[null]"], id="event-name-null"),
    pytest.param(["2probe"], id="2probe-on-an-open-session"),
    pytest.param(["2"], id="client-ping"),
    pytest.param(["43/board,1{}"], id="ack-payload-not-an-array"),
    pytest.param(['41/board,{"x":1}'], id="disconnect-with-payload"),
    pytest.param(['44/board,{"message":"x"}'], id="connect-error-from-client"),
    pytest.param(['42/nowhere,["echo"]'], id="event-for-a-namespace-never-connected"),
    pytest.param(['43/nowhere,1[1]'], id="ack-for-a-namespace-never-connected"),
]


@pytest.mark.parametrize("frames", VIOLATIONS)
def test_protocol_violation_closes_the_connection(server, sbio_live_client, frames):
    bystander = sbio_live_client(server, "/board")
    ws = RawWebSocket(server)
    for frame in frames:
        ws.send(frame)
    assert ws.wait_closed(), f"{frames} must close the connection"
    assert all(_allowed(f) for f in ws.frames), ws.frames
    assert bystander.call("echo", "x") == 1


def test_packets_before_any_connect_close_the_connection(server):
    ws = RawWebSocket(server, namespace=None)
    ws.send('42/board,1["echo",1]')
    assert ws.wait_closed()
    assert not CALLS


def test_violation_over_polling_closes_the_session(server):
    poll = Polling(server)
    poll.post("40/board,")
    assert any(p.startswith("40/board,{") for p in poll.get())
    response = poll.post("42/board,{}")
    assert response.status_code == 400
    assert poll.is_closed()


def test_client_ping_over_polling_closes_the_session_without_hanging(server):
    poll = Polling(server)
    poll.post("40/board,")
    poll.get()
    response = poll.post("2probe")  # answered at once, not after the client's next GET
    assert response.status_code == 400
    assert poll.is_closed()


def test_violation_is_logged_once_not_per_packet(server, caplog):
    caplog.set_level(logging.INFO)
    ws = RawWebSocket(server)
    ws.send("42/board,[]")
    try:
        for _ in range(50):
            ws.send('42/board,["echo", {oops')
    except Closed:
        pass
    assert ws.wait_closed()
    gevent.sleep(0.2)
    ours = ("sbio", "socketio", "engineio", "geventwebsocket")
    noisy = [r for r in caplog.records if r.name.startswith(ours) and r.levelno >= logging.INFO
             and ("malformed" in r.getMessage() or "protocol" in r.getMessage())]
    assert len(noisy) == 1, [r.getMessage() for r in noisy]
    assert not [r for r in caplog.records if r.exc_info]


def test_no_connect_within_connect_timeout_closes_the_websocket(server):
    ws = RawWebSocket(server, namespace=None)
    assert ws.wait_closed(timeout=CONNECT_TIMEOUT + 4), \
        f"no CONNECT within server.connect_timeout ({CONNECT_TIMEOUT}s) must close"


def test_no_connect_within_connect_timeout_closes_a_polling_session(server):
    poll = Polling(server)
    deadline = time.monotonic() + CONNECT_TIMEOUT + 4
    while time.monotonic() < deadline:
        if poll.is_closed(timeout=deadline - time.monotonic()):
            return
    pytest.fail("a polling session without CONNECT must be closed after connect_timeout")


def test_a_connected_client_outlives_connect_timeout(server):
    ws = RawWebSocket(server)
    gevent.sleep(CONNECT_TIMEOUT + 1)
    assert _works(ws)
    ws.close()


@pytest.mark.parametrize("auth", ["{oops", "[1", '"unterminated', "{'single': 1}"])
def test_malformed_connect_gets_connect_error(server, auth):
    ws = RawWebSocket(server, namespace=None)
    ws.send(f"40/board,{auth}")
    try:
        frame = ws.recv()
    except Closed:
        pytest.fail(f"40/board,{auth} closed without a CONNECT_ERROR")
    except TimeoutError:
        pytest.fail(f"40/board,{auth} got no answer")
    assert frame.startswith("44/board,{"), frame
    assert isinstance(json.loads(frame[len("44/board,"):])["message"], str)
    assert ws.wait_closed(), "a malformed CONNECT is a protocol violation: the connection closes"


def test_well_formed_events_with_bad_names_or_arguments_keep_their_envelope(server):
    ws = RawWebSocket(server)
    cases = {
        1: '42/board,1[42]',                       # a number as name: valid socket.io
        2: '42/board,2["sbio:who am i"]',         # sbio's own names
        3: '42/board,3["nope"]',
        4: '42/board,4["login"]',                  # too few arguments
        5: '42/board,5["login",7]',                # wrong type
        6: '42/board,6["sbio:subscribe","nope"]',  # bad payload for the handler
    }
    for packet in cases.values():
        ws.send(packet)
    answers = {}
    while len(answers) < len(cases):
        ack = _ack(ws.recv())
        if ack:
            answers[ack[0]] = ack[1]
    assert {i: e["error"]["code"] for i, e in answers.items()} == {
        1: "bad_request", 2: "bad_request", 3: "not_found", 4: "bad_request",
        5: "bad_request", 6: "bad_request"}
    ws.send('42/board,["nope"]')  # no ack: sbio:error
    frame = ws.recv()
    assert frame.startswith('42/board,["sbio:error"'), frame
    assert _works(ws)
    ws.close()


# -- item 5: polling -------------------------------------------------------------------


class Polling:
    """A raw Engine.IO long-polling session."""

    def __init__(self, server):
        base = server.url + POLL_PATH
        opening = requests.get(base, timeout=5)
        assert opening.status_code == 200 and opening.text.startswith("0{"), opening.text
        self.url = f"{base}&sid={json.loads(opening.text[1:])['sid']}"
        self.closed = False

    def post(self, *packets):
        return requests.post(self.url, data="\x1e".join(packets).encode("utf-8"), timeout=10)

    def get(self, timeout=10):
        """Packets of one GET; [] on timeout; sets closed when the session is over."""
        try:
            response = requests.get(self.url, timeout=timeout)
        except requests.exceptions.ReadTimeout:
            return []
        if response.status_code != 200:
            self.closed = True
            return []
        packets = response.text.split("\x1e")
        if "1" in packets:
            self.closed = True
        if "2" in packets:
            self.post("3")
        return packets

    def is_closed(self, timeout=5):
        if not self.closed:
            self.get(timeout=timeout)
        return self.closed

    def collect(self, count, match, timeout=10):
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            found.extend(p for p in self.get(timeout=left) if match(p))
        return found


def _connected_polling(server):
    poll = Polling(server)
    assert poll.post("40/board,").status_code == 200
    assert any(p.startswith("40/board,{") for p in poll.get())
    return poll


def test_polling_burst_of_40_calls_in_one_post_is_taken_whole(server):
    poll = _connected_polling(server)
    # socket.io-client sends every emit of one tick in one POST
    response = poll.post(*[f'42/board,{i}["echo"' + ",0" * (i % 5) + "]" for i in range(1, 41)])
    assert response.status_code == 200
    acks = [_ack(p) for p in poll.collect(40, lambda p: p.startswith("43/board,"))]
    assert sorted(i for i, _ in acks) == list(range(1, 41))
    assert all(envelope == {"ok": True, "data": i % 5} for i, envelope in acks)


def test_polling_burst_of_40_subscriptions_all_get_their_first_result(server):
    poll = _connected_polling(server)
    packets = [f'42/board,{i}["sbio:subscribe",{{"id":"s{i}","event":"counter","args":[{i}]}}]'
               for i in range(1, 41)]
    assert poll.post(*packets).status_code == 200
    acks = [_ack(p) for p in poll.collect(40, lambda p: p.startswith("43/board,"))]
    assert sorted(i for i, _ in acks) == list(range(1, 41))
    assert all(envelope == {"ok": True, "data": i} for i, envelope in acks)


def test_polling_post_with_more_packets_than_the_limit_is_refused_whole(sbio_server):
    # 4,000 packets in 8,000 bytes, under max_message_size (10,000): more packets
    # than any body of that size holds real events; none of it may be processed.
    CALLS.clear()
    server = sbio_server(Board, config=_config(max_message_size=10_000))
    poll = _connected_polling(server)
    packets = ['42/board,1["echo"]'] + ["6"] * 3_999
    response = poll.post(*packets)
    assert response.status_code == 400
    assert poll.is_closed()
    assert not CALLS, "a refused POST must not be partly processed"


@pytest.mark.parametrize("body", ["x", "", "42/board,1[\"echo\"]\x1e", "\x1e\x1e"],
                         ids=["not-engineio", "empty", "trailing-separator", "empty-packets"])
def test_polling_post_that_does_not_decode_is_refused_not_acknowledged(server, body):
    poll = _connected_polling(server)
    response = requests.post(poll.url, data=body.encode(), timeout=10)
    assert response.status_code == 400, "a body the server does not take must not get 200"
    assert poll.is_closed()


# -- fuzz: the packet path ------------------------------------------------------------

_PREFIXES = ["0", "1", "2", "3", "5", "6", "40", "41", "42", "43", "44", "45", "46", "47", "4",
             "4x", "2probe", "3probe"]
_NAMESPACES = ["", "/board,", "/board", "/nope,", "/", "/board?x=1,"]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10**12) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
_placeholder = st.builds(lambda num, flag: {"_placeholder": flag, "num": num},
                         st.one_of(st.integers(-2, 12), st.text(max_size=2), st.none()),
                         st.sampled_from([True, 1, "yes"]))
_payloads = st.one_of(
    st.text(max_size=30),
    _json_values.map(json.dumps),
    st.lists(st.one_of(st.sampled_from(["echo", "size", "login", "sbio:subscribe", "nope"]),
                       _json_values, _placeholder), max_size=4).map(json.dumps),
)
_text_frames = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, n, i, d: p + n + i + d, st.sampled_from(_PREFIXES),
              st.sampled_from(_NAMESPACES),
              st.one_of(st.just(""), st.integers(0, 10**12).map(str)), _payloads),
    st.builds(lambda count, dash, n, i, d: f"4{5 + (count % 2)}{count}{dash}{n}{i}{d}",
              st.integers(-1, 10**12), st.sampled_from(["-", "", "--"]),
              st.sampled_from(_NAMESPACES), st.one_of(st.just(""), st.integers(0, 99).map(str)),
              _payloads),
)
_frames = st.lists(st.one_of(_text_frames, st.binary(max_size=64)), min_size=1, max_size=6)


def test_fuzzed_packets_never_break_the_server(server, sbio_live_client):
    bystander = sbio_live_client(server, "/board")
    probe_id = 987654321

    @settings(max_examples=200, deadline=10_000, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(frames=_frames)
    def run(frames):
        ws = RawWebSocket(server)
        try:
            try:
                for frame in frames:
                    (ws.send_binary if isinstance(frame, bytes) else ws.send)(frame)
                ws.send(f'42/board,{probe_id}["echo","probe"]')
                while True:  # the probe is answered, or the connection is closed: never wedged
                    ack = _ack(ws.recv(timeout=5))
                    if ack and ack[0] == probe_id:
                        assert ack[1] == {"ok": True, "data": 1}
                        break
            except Closed:
                pass
            assert all(_allowed(f) for f in ws.frames), ws.frames
        finally:
            ws.close()

    run()
    assert bystander.call("echo", "still", "up") == 2
