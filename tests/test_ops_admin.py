"""The socket.io Admin UI (docs/operations.md): its handshake on /admin over a real socket.

The Admin UI (https://admin.socket.io) is a socket.io client of the
``/admin`` namespace; python-socketio's client does here what it does:
connect with ``{username, password}``, then watch ``config``,
``all_sockets``, ``socket_connected``, ``room_joined``, ``server_stats`` ...
"""
import engineio.socket
import gevent
import pytest
import socketio
from werkzeug.security import generate_password_hash

import sbio

from test_ops_metrics import config, wait_for

CREDENTIALS = {"username": "ops", "password": "a long admin password"}


class Lobby(sbio.Namespace):
    """A lobby."""

    name = "/lobby"

    def on_join(self, room: str):
        self.enter_room(room)
        return self.rooms()

    def on_echo(self, x):
        return x


def admin_config(**overrides):
    values = {"admin__enabled": True, "admin__username": CREDENTIALS["username"],
              "admin__password": CREDENTIALS["password"], "admin__stats_interval": 0.5,
              "metrics__enabled": False}
    values.update(overrides)
    return config(**values)


class AdminUI:
    """What the Admin UI does: a socket.io client of /admin recording every event."""

    def __init__(self, server, auth=CREDENTIALS, namespace="/admin"):
        self.events = []
        self.namespace = namespace
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", lambda event, *args: self.events.append((event, args)),
                       namespace=namespace)
        self.client.connect(server.url, namespaces=[namespace], auth=auth,
                            transports=["websocket"], wait_timeout=10)

    def wait(self, event, match=lambda args: True, timeout=15):
        return wait_for(lambda: next((args for name, args in self.events
                                      if name == event and match(args)), None),
                        timeout=timeout, what=f"Admin UI event {event}")

    def close(self):
        self.client.disconnect()


@pytest.fixture
def admin_ui():
    uis = []

    def connect(server, **kwargs):
        ui = AdminUI(server, **kwargs)
        uis.append(ui)
        return ui

    yield connect
    for ui in uis:
        ui.close()


def test_the_admin_ui_sees_sbio_connections_and_rooms(sbio_server, sbio_live_client, admin_ui):
    server = sbio_server(Lobby, config=admin_config(admin__read_only=False))
    early = sbio_live_client(server, "/lobby")
    ui = admin_ui(server)
    config_event = ui.wait("config")
    assert "ALL_EVENTS" in config_event[0]["supportedFeatures"]
    assert "DISCONNECT" in config_event[0]["supportedFeatures"]  # read_only = false
    sockets = ui.wait("all_sockets")[0]
    assert [s["id"] for s in sockets if s["nsp"] == "/lobby"] == [early.sid]

    client = sbio_live_client(server, "/lobby")
    connected = ui.wait("socket_connected", lambda args: args[0]["id"] == client.sid)
    assert connected[0]["nsp"] == "/lobby"
    assert connected[0]["transport"] == "websocket"
    assert connected[0]["handshake"]["address"] == "127.0.0.1"

    client.call("join", "red")
    ui.wait("room_joined", lambda args: list(args[:3]) == ["/lobby", "red", client.sid])

    stats = ui.wait("server_stats", lambda args: any(
        ns["name"] == "/lobby" and ns["socketsCount"] == 2 for ns in args[0]["namespaces"]))
    assert stats[0]["clientsCount"] == 3  # two clients and the admin, one Engine.IO socket each

    sid = client.sid
    client.disconnect()
    ui.wait("socket_disconnected", lambda args: list(args[:2]) == ["/lobby", sid])


def test_a_refused_connection_never_shows_as_connected(sbio_server, sbio_live_client, admin_ui):
    class Closed(sbio.Namespace):
        name = "/closed"

        def on_connect(self, auth):
            raise sbio.ConnectionRefused("closed")

    server = sbio_server(Lobby, Closed, config=admin_config())
    ui = admin_ui(server)
    ui.wait("all_sockets")
    with pytest.raises(sbio.ConnectionRefused):
        sbio_live_client(server, "/closed")
    marker = sbio_live_client(server, "/lobby")  # reported after the refused one
    ui.wait("socket_connected", lambda args: args[0]["id"] == marker.sid)
    reported = [args[0]["nsp"] for name, args in ui.events if name == "socket_connected"]
    assert [nsp for nsp in reported if nsp != "/admin"] == ["/lobby"]  # (the admin sees itself)


def test_read_only_is_the_default(sbio_server, admin_ui):
    server = sbio_server(Lobby, config=admin_config())
    features = admin_ui(server).wait("config")[0]["supportedFeatures"]
    assert "DISCONNECT" not in features and "EMIT" not in features


@pytest.mark.parametrize("auth", [None, {"username": "ops", "password": "wrong"},
                                  {"username": "someone", "password": CREDENTIALS["password"]},
                                  {"username": 1, "password": ["x"]}, "a string"])
def test_wrong_credentials_are_refused(sbio_server, auth):
    server = sbio_server(Lobby, config=admin_config())
    with pytest.raises(socketio.exceptions.ConnectionError):
        AdminUI(server, auth=auth)


def test_a_password_hash_works(sbio_server, admin_ui):
    server = sbio_server(Lobby, config=admin_config(
        admin__password="", admin__password_hash=generate_password_hash(CREDENTIALS["password"])))
    admin_ui(server).wait("config")
    with pytest.raises(socketio.exceptions.ConnectionError):
        AdminUI(server, auth={"username": "ops", "password": "nope"})


@pytest.mark.parametrize("missing", [{"admin__username": ""}, {"admin__password": ""}])
def test_without_credentials_it_is_refused_outside_debug(missing):
    with pytest.raises(sbio.ConfigurationError, match=r"admin\.username and admin\.password"):
        sbio.Server([Lobby], config=admin_config(**missing))


def test_an_application_namespace_cannot_take_the_admin_namespace():
    class Admin(sbio.Namespace):
        name = "/admin"

    with pytest.raises(sbio.ConfigurationError, match=r"admin\.namespace"):
        sbio.Server([Admin], config=admin_config())
    sbio.Server([Admin], config=admin_config(admin__namespace="/socketio-admin")).stop()


def test_in_debug_mode_it_may_run_without_credentials(sbio_server, admin_ui):
    server = sbio_server(Lobby, config=admin_config(admin__username="", admin__password="",
                                                    server__debug=True))
    admin_ui(server, auth=None).wait("config")


def test_it_is_off_by_default(sbio_server):
    server = sbio_server(Lobby)
    assert server.ops.admin is None
    with pytest.raises(socketio.exceptions.ConnectionError):
        AdminUI(server, auth=CREDENTIALS)


def test_two_instrumented_servers_of_one_process_stay_apart(sbio_server, sbio_live_client,
                                                             admin_ui):
    post_request = engineio.socket.Socket.handle_post_request
    websocket_handler = engineio.socket.Socket._websocket_handler
    first = sbio_server(Lobby, config=admin_config())
    second = sbio_server(Lobby, config=admin_config())
    ui_first, ui_second = admin_ui(first), admin_ui(second)
    ui_first.wait("all_sockets")
    ui_second.wait("all_sockets")
    # python-engineio's Socket class itself is not patched (upstream's instrument() does)
    assert engineio.socket.Socket.handle_post_request is post_request
    assert engineio.socket.Socket._websocket_handler is websocket_handler

    one = sbio_live_client(first, "/lobby")
    two = sbio_live_client(second, "/lobby", transports=["polling"])
    assert one.call("echo", 1) == 1 and two.call("echo", 2) == 2  # both transports still work
    ui_first.wait("socket_connected", lambda args: args[0]["id"] == one.sid)
    ui_second.wait("socket_connected", lambda args: args[0]["id"] == two.sid)
    gevent.sleep(0)
    assert two.sid not in {args[0]["id"] for name, args in ui_first.events
                           if name == "socket_connected"}
    assert one.sid not in {args[0]["id"] for name, args in ui_second.events
                           if name == "socket_connected"}
    # each one counts its own traffic
    ui_second.wait("server_stats", lambda args: any(
        e["type"] == "packetsIn" for e in args[0]["aggregatedEvents"]))


def test_stopping_the_server_stops_the_stats_greenlet(sbio_server, admin_ui):
    server = sbio_server(Lobby, config=admin_config())
    ui = admin_ui(server)
    ui.wait("server_stats")
    task = server.ops.admin.stats_task
    assert task is not None and not task.dead
    server.stop(timeout=5)
    assert task.dead
