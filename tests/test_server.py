"""A real sbio.Server on a loopback port, driven by python-socketio clients and raw sockets."""
import json
import logging
import struct

import gevent
import pytest
import requests
import websocket

from sbio import ConnectionRefused, Namespace
from sbio.testing import CallError

import chat  # the bundled namespaces/chat.py (tests/conftest.py puts it on sys.path)


class Chat(chat.Chat):
    """The bundled chat, plus two ways to fail."""

    def on_connect(self, auth):
        if auth and auth.get("token") == "crash":
            raise RuntimeError("on_connect bug")
        return super().on_connect(auth)

    def on_crash(self):
        raise RuntimeError("handler bug")


class Other(Namespace):
    name = "/other"

    def on_mark(self, value):
        self.session["mine"] = value
        self.connection_session["shared"] = value
        return True

    def on_peek(self):
        return {"mine": self.session.get("mine"), "shared": self.connection_session.get("shared")}


TRANSPORTS = [pytest.param(["websocket"], id="websocket"),
              pytest.param(["polling"], id="polling")]


@pytest.fixture
def server(sbio_server):
    return sbio_server(Chat, Other)


@pytest.mark.parametrize("transports", TRANSPORTS)
def test_login_flow_and_error_codes(server, sbio_live_client, transports):
    c = sbio_live_client(server, "/chat", transports=transports)
    assert c.call_envelope("whoami")["error"]["code"] == "forbidden"
    assert c.call_envelope("login", "ann", "nope")["error"] == {
        "code": "bad_credentials", "message": "wrong user name or password"}
    assert c.call_envelope("login", "ann", "secret") == {"ok": True, "data": {"user": "ann"}}
    assert c.call("whoami") == "ann"
    codes = {
        "not_found": c.call_envelope("nope"),
        "bad_request": c.call_envelope("login", "only-one-argument"),
        "internal": c.call_envelope("crash"),
    }
    for code, envelope in codes.items():
        assert envelope["ok"] is False and envelope["error"]["code"] == code, envelope
        assert "Traceback" not in envelope["error"]["message"]
    assert c.call_envelope("sbio:bad name")["error"]["code"] == "bad_request"
    c.emit("nope")
    assert c.receive("sbio:error") == [{"event": "nope", "code": "not_found",
                                        "message": "no handler for event 'nope'"}]


def test_refused_connect_gets_message_and_data(server, sbio_live_client):
    with pytest.raises(ConnectionRefused) as err:
        sbio_live_client(server, "/chat", auth={"token": "bad"})
    assert err.value.message == "bad token"
    assert err.value.data == {"code": 401}


def test_refused_connect_over_polling(server):
    # Raw HTTP: python-socketio's client waits out a long-poll after a refusal.
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    sid = json.loads(requests.get(base, timeout=5).text[1:])["sid"]
    assert requests.post(f"{base}&sid={sid}", data='40/chat,{"token":"bad"}',
                         timeout=5).text == "OK"
    answer = requests.get(f"{base}&sid={sid}", timeout=5).text
    assert answer == '44/chat,{"message":"bad token","data":{"code":401}}'


def test_crash_in_on_connect_answers_instead_of_hanging(server, sbio_live_client):
    with pytest.raises(ConnectionRefused) as err:
        sbio_live_client(server, "/chat", auth={"token": "crash"}, timeout=5)
    assert err.value.message == "Internal server error"


def test_unknown_namespace_is_invalid(server, sbio_live_client):
    with pytest.raises(ConnectionRefused) as err:
        sbio_live_client(server, "/nowhere")
    assert err.value.message == "Invalid namespace"


def test_namespaces_on_one_connection_have_own_instances_and_a_shared_session(server):
    import socketio

    client = socketio.Client(reconnection=False)
    client.connect(server.url, namespaces=["/chat", "/other"], transports=["websocket"],
                   wait_timeout=5)
    try:
        assert client.call("mark", "x", namespace="/other", timeout=5)["ok"]
        chat_sid, other_sid = client.get_sid("/chat"), client.get_sid("/other")
        chat_ns = server.dispatcher("/chat").instances[chat_sid]
        other = server.dispatcher("/other").instances[other_sid]
        assert chat_ns is not other
        assert chat_ns.session == {"user": None}
        assert other.session == {"mine": "x"}
        assert chat_ns.connection_session is other.connection_session
        assert chat_ns.connection_session == {"shared": "x"}
    finally:
        client.disconnect()


def test_two_clients_see_each_others_room_messages(server, sbio_live_client):
    ann = sbio_live_client(server, "/chat")
    bob = sbio_live_client(server, "/chat")
    for client, name in ((ann, "ann"), (bob, "bob")):
        client.call("login", name, "secret")
        client.call("join", "lobby")
    assert ann.call("say", "lobby", "hi bob") == "sent"
    assert bob.receive("message") == [{"room": "lobby", "user": "ann", "text": "hi bob"}]
    with pytest.raises(CallError) as err:
        ann.call("say", "elsewhere", "hello?")
    assert err.value.code == "not_in_room"


def _raw_websocket(server, namespace="/chat", origin=None):
    url = server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=5, origin=origin)
    assert ws.recv().startswith("0{")  # engine.io open
    ws.send(f"40{namespace},")
    assert ws.recv().startswith(f"40{namespace},")
    return ws


def _next_event(ws):
    while True:
        frame = ws.recv()
        if frame == "2":  # engine.io ping
            ws.send("3")
            continue
        return frame


def test_non_json_payload_closes_the_connection_and_others_keep_working(server, sbio_live_client):
    # issue 11 item 7: a packet that does not decode is a protocol violation
    # (socket.io's reference server closes); it used to get sbio:error
    bystander = sbio_live_client(server, "/chat")
    ws = _raw_websocket(server)
    ws.send('42/chat,["login", {not json')
    assert _next_event(ws) == "1"  # Engine.IO CLOSE, then the close frame
    assert _close_code(ws) == 1000
    ws.close()
    assert bystander.call("login", "ann", "secret") == {"user": "ann"}


def test_oversize_websocket_message_closes_with_1009_and_others_keep_working(server,
                                                                            sbio_live_client):
    bystander = sbio_live_client(server, "/chat")
    ws = _raw_websocket(server)
    big = '42/chat,["login","' + "x" * 2_000_000 + '","secret"]'
    ws.send(big)
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    code, reason = struct.unpack("!H", frame.data[:2])[0], frame.data[2:].decode()
    assert code == 1009  # "message too big"
    assert "limit 1000000" in reason
    ws.close()
    assert bystander.call("login", "bob", "secret") == {"user": "bob"}


def test_oversize_polling_message_is_refused(server):
    open_ = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", timeout=5)
    sid = json.loads(open_.text[1:])["sid"]
    big = '42/chat,["x","' + "x" * 2_000_000 + '"]'
    response = requests.post(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                             data=big, timeout=10)
    assert response.status_code == 413
    assert "limit 1000000" in response.text


def test_foreign_origin_is_refused_same_origin_accepted(server):
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    assert requests.get(base, headers={"Origin": "http://evil.example"},
                        timeout=5).status_code == 400
    # a look-alike of the host must not pass either (Sideboard's substring check did)
    assert requests.get(base, headers={"Origin": f"{server.url}.evil.example"},
                        timeout=5).status_code == 400
    assert requests.get(base, headers={"Origin": server.url}, timeout=5).status_code == 200
    with pytest.raises(websocket.WebSocketBadStatusException):
        _raw_websocket(server, origin="http://evil.example")


def test_configured_cors_origin_is_accepted(sbio_server, sbio_config):
    from sbio.config import load_sbio_config

    config = load_sbio_config(overrides={
        "server.host": "127.0.0.1", "server.port": 0,
        "server.cors_allowed_origins": ["http://app.example"]})
    server = sbio_server(Chat, config=config)
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    assert requests.get(base, headers={"Origin": "http://app.example"},
                        timeout=5).status_code == 200
    assert requests.get(base, headers={"Origin": "http://evil.example"},
                        timeout=5).status_code == 400


def test_bad_input_is_never_logged_as_an_unhandled_exception(server, sbio_live_client, caplog,
                                                             capfd):
    caplog.set_level(logging.INFO)
    c = sbio_live_client(server, "/chat")
    c.call_envelope("nope")
    c.call_envelope("sbio:bad name")
    c.call_envelope("login")
    ws = _raw_websocket(server)
    ws.send('42/chat,["x", {oops')
    _next_event(ws)
    ws.send("not a packet at all")
    ws.close()
    assert c.call("login", "ann", "secret") == {"user": "ann"}
    ours = ("sbio", "socketio", "engineio", "geventwebsocket", "gevent")
    unhandled = [r for r in caplog.records if r.name.startswith(ours)
                 and (r.exc_info or r.levelno >= logging.ERROR)]
    assert unhandled == []
    assert "Traceback" not in capfd.readouterr().err  # gevent prints crashed greenlets there


def test_index_page_lists_namespaces_and_static_files_are_served(server):
    page = requests.get(server.url + "/", timeout=5)
    assert page.status_code == 200
    assert "/chat" in page.text and "/other" in page.text


def test_stop_closes_connections_so_clients_may_reconnect(sbio_server, sbio_live_client):
    ended = []

    class Tracked(Chat):
        def on_disconnect(self, reason):
            ended.append(reason)

    server = sbio_server(Tracked)
    polling = sbio_live_client(server, "/chat", transports=["polling"])
    ws = _raw_websocket(server)
    server.stop(timeout=5)
    frames = []
    while True:
        try:
            frames.append(ws.recv())
        except websocket.WebSocketConnectionClosedException:
            break
    # The websocket just closes: no socket.io DISCONNECT ("41/chat,"), after
    # which socket.io-client would never reconnect by itself, and no Engine.IO
    # CLOSE ("1"), after which python-socketio's client would not.
    assert "1" not in frames and not any(f.startswith("41") for f in frames)
    polling.receive("disconnect", timeout=5)
    assert ended == ["server disconnect", "server disconnect"]
    assert not server.started


@pytest.mark.parametrize("frame", ["not a packet at all", ""])
def test_non_engineio_websocket_frame_closes_1002_and_cleans_up_at_once(server, frame, caplog):
    ws = _raw_websocket(server)
    instances = server.dispatcher("/chat").instances
    assert len(instances) == 1
    ws.send(frame)
    while True:
        opcode, data = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert struct.unpack("!H", data.data[:2])[0] == 1002
    ws.close()
    for _ in range(100):  # on_disconnect runs now, not at the ping timeout
        if not instances:
            break
        gevent.sleep(0.02)
    assert not instances
    assert not [r for r in caplog.records if r.exc_info]


def test_a_stopped_server_cannot_be_restarted(sbio_server):
    server = sbio_server(Chat)
    server.stop(timeout=5)
    with pytest.raises(RuntimeError, match="create a new Server"):
        server.start()


def test_busy_port_fails_before_startup_hooks_run(sbio_config, sbio_lifecycle):
    import socket as stdlib_socket

    from sbio import Server

    ran = []
    sbio_lifecycle.on_startup(lambda: ran.append("hook"))
    with stdlib_socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = Server([Chat], config=sbio_config, host="127.0.0.1",
                        port=busy.getsockname()[1], lifecycle=sbio_lifecycle)
        with pytest.raises(OSError):
            server.start()
    assert ran == []
    assert not sbio_lifecycle.running


def test_default_app_renders_templates_from_templates_dir(sbio_server, tmp_path):
    from flask import render_template

    from sbio.config import load_sbio_config

    (tmp_path / "hello.html").write_text("hello {{ name }}")
    config = load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                         "server.templates_dir": str(tmp_path)})
    server = sbio_server(Chat, config=config)
    server.app.add_url_rule("/hello", "hello", lambda: render_template("hello.html", name="ann"))
    assert requests.get(server.url + "/hello", timeout=5).text == "hello ann"


class NoDelay(Namespace):
    """Reports TCP_NODELAY of the server side of its own websocket connection."""

    name = "/nodelay"

    def on_nodelay(self):
        import socket as stdlib_socket

        # gevent-websocket's WebSocket keeps its handler, whose socket is the accepted one.
        sock = self.environ["wsgi.websocket"].handler.socket
        return sock.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("setting", [None, True, False], ids=["default", "on", "off"])
def test_tcp_nodelay_on_accepted_sockets_follows_the_setting(sbio_server, sbio_live_client,
                                                             setting):
    from sbio.config import load_sbio_config

    overrides = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "sbio-tests"}
    if setting is not None:
        overrides["server.tcp_nodelay"] = setting
    server = sbio_server(NoDelay, config=load_sbio_config(overrides=overrides))
    assert sbio_live_client(server, "/nodelay").call("nodelay") is (setting is not False)


def _close_code(ws):
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def test_invalid_utf8_text_closes_1007(server):
    ws = _raw_websocket(server)
    ws.send(b'42/chat,["x","\xff\xfe"]', opcode=websocket.ABNF.OPCODE_TEXT)
    assert _close_code(ws) == 1007
    ws.close()


def test_fragmented_text_message_is_reassembled(server):
    ws = _raw_websocket(server)
    text = b'42/chat,7["login","ann","secret"]'
    # multi-byte UTF-8 split across frames too
    ws.send_frame(websocket.ABNF(0, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 1, text[:10]))
    ws.send_frame(websocket.ABNF(0, 0, 0, 0, websocket.ABNF.OPCODE_CONT, 1, text[10:]))
    ws.send_frame(websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_CONT, 1, b""))
    assert json.loads(_next_event(ws)[len("43/chat,7"):]) == [{"ok": True, "data": {"user": "ann"}}]
    word = "héllo wörld ✓".encode()
    body = b'42/chat,8["login","' + word + b'","x"]'
    cut = body.index(b"\xc3") + 1  # inside a two-byte character
    ws.send_frame(websocket.ABNF(0, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 1, body[:cut]))
    ws.send_frame(websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_CONT, 1, body[cut:]))
    assert json.loads(_next_event(ws)[len("43/chat,8"):])[0]["error"]["code"] == "bad_credentials"
    ws.close()


def test_binary_attachments_survive_unmasking(sbio_server, sbio_live_client):
    class Bytes(Namespace):
        name = "/bytes"

        def on_reverse(self, data):
            return bytes(reversed(data))

    server = sbio_server(Bytes)
    c = sbio_live_client(server, "/bytes")
    payload = bytes(range(256)) * 5 + b"\x00\x01\x02"
    assert c.call("reverse", payload) == bytes(reversed(payload))
