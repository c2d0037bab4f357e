"""Transport limits against hostile clients, over real sockets (issue 11, items 2 and 8).

* a client that never reads (websocket) or never GETs (polling) while the
  server emits to it is dropped as a slow consumer once its outbound queue
  passes ``server.max_outbound_messages`` / ``server.max_outbound_bytes``;
  everyone else keeps getting every message;
* a client that stops answering pings loses its TCP connection, closed by
  the server itself;
* request headers and the websocket upgrade must complete within
  ``server.http_timeout``;
* past ``server.max_connections`` concurrent connections, the next one is
  answered 503 and closed.

The attacker is a raw socket (websocket-client, ``socket``, ``requests``):
it does exactly what a hostile client would, no more.
"""
import json
import logging
import socket
import time

import gevent
import pytest
import requests
import websocket

from sbio import Namespace
from sbio.config import load_sbio_config

SLACK = 5.0  # seconds of slack on every "within" bound: the machine is shared


#: sid -> the reason on_disconnect got
DISCONNECTS = {}


class Fan(Namespace):
    """Broadcasts on demand: the fan-out a slow consumer sits in."""

    name = "/fan"

    def on_disconnect(self, reason):
        DISCONNECTS[self.sid] = reason

    def on_blast(self, count: int, size: int):
        # bytes: a binary attachment, which test clients decode without a
        # pure-Python UTF-8 check (websocket-client's), so megabytes are quick
        pad = b"x" * size
        for seq in range(count):
            self.broadcast("fan", {"seq": seq, "pad": pad})
            # paced, so the in-process test clients (same process, same CPU)
            # keep up: a slow consumer here is one that does not read at all
            gevent.sleep(0.001)
        return count


def _config(**server):
    config = load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                         "server.secret_key": "sbio-tests"})
    config["server"].update(server)
    return config


def _ws_url(server, query=""):
    return server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket" + query


def _polling_url(server, sid=None):
    url = f"{server.url}/socket.io/?EIO=4&transport=polling"
    return url if sid is None else f"{url}&sid={sid}"


def _open_packet(frame):
    assert frame.startswith("0{"), frame
    return json.loads(frame[1:])


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        gevent.sleep(0.05)


def _read_until_closed(sock, timeout):
    """Read raw bytes (answering nothing) until the peer closes; the bytes, or None on timeout."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data)
        except TimeoutError:
            return None
        if not chunk:
            return bytes(data)
        data += chunk


class _Ponger:
    """Send an Engine.IO PONG every *interval* s without reading anything.

    What a client does that "answers pings" while never reading its socket:
    Engine.IO v4 accepts a PONG at any time, and each one keeps the session
    alive.
    """

    def __init__(self, send, interval=0.3):
        self._send = send
        self._greenlet = gevent.spawn(self._run, interval)

    def _run(self, interval):
        while True:
            try:
                self._send()
            except (OSError, websocket.WebSocketException, requests.RequestException):
                # the server dropped us: that is the point
                return
            gevent.sleep(interval)

    def stop(self):
        self._greenlet.kill(block=True, timeout=2)


def _slow_websocket(server, namespace="/fan"):
    """A websocket client with a tiny receive buffer: (ws, engine.io sid, socket.io sid)."""
    ws = websocket.create_connection(
        _ws_url(server), timeout=5,
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    eio_sid = _open_packet(ws.recv())["sid"]
    ws.send(f"40{namespace},")
    frame = ws.recv()
    assert frame.startswith(f"40{namespace},"), frame
    return ws, eio_sid, json.loads(frame[len(f"40{namespace},"):])["sid"]


def _quiet_transport_logs(caplog):
    """INFO for sbio, but not python-engineio's line per packet (megabytes here)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.WARNING, logger="sbio.engineio")
    caplog.set_level(logging.WARNING, logger="sbio.socketio")


def _slow_consumer_records(caplog, sid):
    return [r for r in caplog.records if sid in r.getMessage()
            and "slow consumer" in r.getMessage()]


# -- outbound queues ---------------------------------------------------------------------

QUEUE_LIMITS = [
    pytest.param({"max_outbound_messages": 200}, id="messages"),
    pytest.param({"max_outbound_messages": 100_000, "max_outbound_bytes": 1_000_000}, id="bytes"),
]


@pytest.mark.parametrize("limits", QUEUE_LIMITS)
def test_websocket_client_that_never_reads_is_dropped_others_get_everything(
        sbio_server, sbio_live_client, caplog, limits):
    _quiet_transport_logs(caplog)
    server = sbio_server(Fan, config=_config(ping_interval=1, ping_timeout=3, **limits))
    good = sbio_live_client(server, "/fan")
    driver = sbio_live_client(server, "/fan")
    ws, eio_sid, sid = _slow_websocket(server)
    ponger = _Ponger(lambda: ws.send("3"))
    instances = server.dispatcher("/fan").instances
    try:
        assert sid in instances
        count, size = 1000, 8000  # 8 MB: far more than the kernel's socket buffers hold
        assert driver.call("blast", count, size, timeout=60) == count
        _wait_for(lambda: sid not in instances, 10, "the slow consumer is dropped")
        assert DISCONNECTS[sid] == "transport error"
        good.receive("fan", timeout=30, count=count)
        seqs = [args[0]["seq"] for args in good.received("fan")]
        assert seqs == list(range(count))  # every message, once, in order
        assert good.connected and driver.connected
        # the server closes the slow one's TCP connection too (its backlog is gone)
        assert _read_until_closed(ws.sock, 10) is not None
        records = _slow_consumer_records(caplog, eio_sid)
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.WARNING
    finally:
        ponger.stop()
        ws.close()


def test_polling_session_that_never_gets_is_dropped(sbio_server, sbio_live_client, caplog):
    _quiet_transport_logs(caplog)
    server = sbio_server(Fan, config=_config(ping_interval=1, ping_timeout=3,
                                             max_outbound_messages=100))
    good = sbio_live_client(server, "/fan")
    http = requests.Session()
    eio_sid = _open_packet(http.get(_polling_url(server), timeout=5).text)["sid"]
    assert http.post(_polling_url(server, eio_sid), data="40/fan,", timeout=5).text == "OK"
    connected = http.get(_polling_url(server, eio_sid), timeout=5).text
    assert connected.startswith("40/fan,"), connected
    sid = json.loads(connected[len("40/fan,"):])["sid"]
    instances = server.dispatcher("/fan").instances
    # keeps the session alive, and never GETs again
    ponger = _Ponger(lambda: requests.post(_polling_url(server, eio_sid), data="3",
                                           timeout=5).raise_for_status())
    try:
        assert sid in instances
        count = 300
        assert good.call("blast", count, 100, timeout=30) == count
        _wait_for(lambda: sid not in instances, 10, "the polling session is dropped")
        assert DISCONNECTS[sid] == "transport error"
        good.receive("fan", timeout=10, count=count)
        assert [a[0]["seq"] for a in good.received("fan")] == list(range(count))
        # the session is over: a close packet or an unknown session, not the backlog
        answer = requests.get(_polling_url(server, eio_sid), timeout=5)
        assert answer.status_code == 400 or answer.text == "1", answer.text[:200]
        assert len(_slow_consumer_records(caplog, eio_sid)) == 1
    finally:
        ponger.stop()


# -- ping timeout ---------------------------------------------------------------------------


def test_ping_timeout_closes_the_tcp_connection(sbio_server):
    server = sbio_server(Fan, config=_config(ping_interval=1, ping_timeout=1, http_timeout=1))
    ws = websocket.create_connection(_ws_url(server), timeout=5)
    _open_packet(ws.recv())
    started = time.monotonic()
    # never answer the pings (nor the close frame that follows)
    data = _read_until_closed(ws.sock, 2 + 2 + SLACK)
    assert data is not None, "the server kept the TCP connection after the ping timeout"
    assert time.monotonic() - started >= 1  # not before a ping was due
    ws.sock.close()


# -- HTTP: slow headers, slow upgrades -----------------------------------------------------


def _raw_connection(server):
    return socket.create_connection((server.host, server.port), timeout=5)


SLOW_REQUESTS = [
    pytest.param(b"GET / HTTP/1.1\r\n", id="request-line-only"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */", id="half-a-header"),
    pytest.param(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\n", id="half-a-websocket-handshake"),
    pytest.param(b"", id="nothing-at-all"),
]


@pytest.mark.parametrize("request_head", SLOW_REQUESTS)
def test_slow_request_head_is_closed_within_http_timeout(sbio_server, request_head):
    server = sbio_server(Fan, config=_config(http_timeout=1))
    sock = _raw_connection(server)
    try:
        sock.sendall(request_head)
        started = time.monotonic()
        data = _read_until_closed(sock, 1 + SLACK)
        assert data is not None, "the server held a connection whose headers never came"
        assert time.monotonic() - started >= 0.5
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    finally:
        sock.close()
    # the server is fine afterwards
    assert requests.get(server.url + "/", timeout=5).status_code == 200


def test_slow_engineio_upgrade_is_closed_within_http_timeout(sbio_server):
    # ping timeouts far away, so only the upgrade deadline can close it
    server = sbio_server(Fan, config=_config(http_timeout=1, ping_interval=25, ping_timeout=20))
    eio_sid = _open_packet(requests.get(_polling_url(server), timeout=5).text)["sid"]
    ws = websocket.create_connection(_ws_url(server, f"&sid={eio_sid}"), timeout=5)
    try:
        # the HTTP upgrade is done (101); the Engine.IO probe ("2probe") never comes
        started = time.monotonic()
        data = _read_until_closed(ws.sock, 1 + SLACK)
        assert data is not None, "the server held a websocket upgrade that never completed"
        assert time.monotonic() - started >= 0.5
    finally:
        ws.sock.close()


def test_a_prompt_engineio_upgrade_still_works(sbio_server, sbio_live_client):
    server = sbio_server(Fan, config=_config(http_timeout=1))
    client = sbio_live_client(server, "/fan", transports=["polling", "websocket"])
    _wait_for(lambda: client.client.transport() == "websocket", 5, "the upgrade")
    gevent.sleep(1.5)  # past http_timeout: an upgraded connection is not timed out
    assert client.call("blast", 3, 10) == 3
    assert client.client.transport() == "websocket"


# -- connection cap -----------------------------------------------------------------------


def test_connections_past_max_connections_get_503(sbio_server):
    server = sbio_server(Fan, config=_config(max_connections=3))
    held = []
    try:
        for _ in range(3):
            ws = websocket.create_connection(_ws_url(server), timeout=5)
            _open_packet(ws.recv())
            held.append(ws)
        refused = requests.get(server.url + "/", timeout=5)
        assert refused.status_code == 503
        assert refused.headers.get("Connection", "").lower() == "close"
        # a refused websocket upgrade, too
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            websocket.create_connection(_ws_url(server), timeout=5)
        assert err.value.status_code == 503
        held.pop().close()

        def accepted():
            return requests.get(server.url + "/", timeout=5).status_code == 200

        _wait_for(accepted, 5, "a connection is accepted again once one closed")
    finally:
        for ws in held:
            ws.close()
