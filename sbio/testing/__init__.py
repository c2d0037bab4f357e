r"""The sbio pytest plugin: fixtures and the in-process namespace client.

Opt in, per project: installing sbio loads nothing into pytest (there is no
``pytest11`` entry point), so other projects in the same environment are
unaffected. Load the plugin with ``-p sbio.testing`` in your pytest
configuration (``addopts = -p sbio.testing`` in ``pytest.ini``: loaded
first, the best place) or with ``pytest_plugins = ["sbio.testing"]`` in your
top-level ``conftest.py``.

Importing this module *is* loading the plugin, and it has one side effect:
it monkey-patches gevent first thing (``gevent.monkey.patch_all()``), as
``sbio run`` does, unless the socket module is patched already; set
``SBIO_MONKEY_PATCH=0`` to opt out. Import it from test code only.

Fixtures (every name starts with ``sbio_``, so none collides with another
plugin's, e.g. pytest-django's ``db`` or pytest-redislite's ``redis_url``)
--------------------------------------------------------------------------
``sbio_client``
    factory of :class:`LocalClient`: an in-process client for a Namespace
    class that goes through the same dispatch code as a real connection,
    with real socket.io packets and no network.
``sbio_server``
    factory of real :class:`sbio.Server`\ s on a free loopback port, stopped
    after the test.
``sbio_live_client``
    factory of :class:`LiveClient`: a python-socketio client connected to a
    server over a real socket (websocket or polling).
``sbio_config``
    the configuration the two factories use (sbio's defaults, host 127.0.0.1,
    port 0); override it in your conftest to change settings.
``sbio_config_patcher``
    set configuration values for one test (``sbio.testing.config_fixtures``).
``sbio_db``, ``sbio_db_seed``, ``sbio_db_backend``, ``sbio_session_manager``
    a fresh database per test for :mod:`sbio.sa` applications (``sbio.testing.db_fixtures``).
``sbio_lifecycle``, ``sbio_clock``, ``sbio_run_task_once``
    background tasks under test control (``sbio.testing.task_fixtures``).
``sbio_postgres_url`` / ``sbio_redis_url`` / ``sbio_chromium``
    The local service to test against. When the service is not reachable
    the test is skipped with a message naming what is missing; with the
    environment variable ``SBIO_REQUIRE_SERVICES=1`` (set by ``.ci/run``)
    the skip becomes a failure, so CI always runs those tests.
"""
import os

if os.environ.get("SBIO_MONKEY_PATCH", "1").lower() not in ("0", "false", "no"):
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()

import itertools  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import uuid  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import pytest  # noqa: E402
from engineio import packet as eio_packet  # noqa: E402
from socketio import packet as sio_packet  # noqa: E402

from .config_fixtures import sbio_config_patcher  # noqa: E402,F401
from .db_fixtures import *  # noqa: E402,F401,F403
from .task_fixtures import *  # noqa: E402,F401,F403
from ..adapter import capture_output, feed_connect, feed_disconnect, feed_message  # noqa: E402
from ..errors import ConnectionRefused, RpcError, SbioError, SbioTimeoutError  # noqa: E402

__all__ = ["CallError", "LocalClient", "LiveClient", "Subscription", "missing_service"]

#: Environment variable that turns "service missing" skips into failures.
REQUIRE_SERVICES_ENV = "SBIO_REQUIRE_SERVICES"

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def _services_required():
    return os.environ.get(REQUIRE_SERVICES_ENV, "").lower() in ("1", "true", "yes")


def missing_service(what):
    """Skip the current test because *what* is missing (fail instead under CI)."""
    message = f"{what} is not available"
    if _services_required():
        pytest.fail(f"{message} and {REQUIRE_SERVICES_ENV} is set", pytrace=False)
    pytest.skip(message)


def _port_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _network_service(what, url, default_port, module, install_hint):
    """*url* when its client library imports and its port accepts connections."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        missing_service(f"{what} client library {module} ({install_hint})")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if not _port_open(host, port):
        missing_service(f"{what} at {host}:{port}")
    return url


@pytest.fixture(scope="session")
def sbio_postgres_url():
    """SQLAlchemy URL of the local PostgreSQL (``SBIO_TEST_POSTGRES_URL`` overrides)."""
    return _network_service("PostgreSQL",
                            os.environ.get("SBIO_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                            5432, "psycopg", "pip install 'sbio[postgres]'")


@pytest.fixture(scope="session")
def sbio_redis_url():
    """URL of the local Redis (``SBIO_TEST_REDIS_URL`` overrides; db 15 by default)."""
    return _network_service("Redis", os.environ.get("SBIO_TEST_REDIS_URL", DEFAULT_REDIS_URL),
                            6379, "redis", "pip install 'sbio[redis]'")


@pytest.fixture(scope="session")
def sbio_chromium():
    """Path of a Chromium binary for Playwright (``SBIO_CHROMIUM`` overrides)."""
    path = os.environ.get("SBIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        missing_service("Chromium (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_service("Playwright (pip install playwright)")
    return path


# -- clients ----------------------------------------------------------------------


class CallError(RpcError):
    """A test client's call was answered with ``{"ok": false, "error": ...}``.

    ``code`` and ``message`` are the error's; for an ``internal`` error of an
    in-process client, ``__cause__`` is the exception the handler raised.
    """

    __test__ = False


class _ClientBase:
    """What both test clients share: the received-events log and waiting on it."""

    __test__ = False

    def __init__(self, namespace, timeout):
        self.namespace = namespace
        self.timeout = timeout
        self.events = []  # [(event, args)]
        self._arrived = gevent.event.Event()
        self.subscriptions = {}  # id -> Subscription (see subscribe())
        self._sub_ids = itertools.count(1)

    def _record(self, event, args):
        self.events.append((event, list(args)))
        if event == "sbio:update":
            self._route_update(args)
        self._arrived.set()

    def received(self, event=None):
        """Every event received so far (or only *event*), as ``[(event, args)]``
        or, with *event*, a list of argument lists."""
        if event is None:
            return list(self.events)
        return [args for name, args in self.events if name == event]

    def receive(self, event, timeout=None, count=1):
        """Wait until *count* ``event`` events have been received; return the last's args.

        Raises :class:`~sbio.SbioTimeoutError` (a :class:`TimeoutError`) after
        *timeout* seconds (the client's default).
        """
        timeout = self.timeout if timeout is None else timeout
        with gevent.Timeout(timeout, SbioTimeoutError(
                f"{count} {event!r} event(s) not received within {timeout}s "
                f"(got: {[name for name, _ in self.events]})")):
            while True:
                matching = self.received(event)
                if len(matching) >= count:
                    return matching[count - 1]
                self._arrived.clear()
                self._arrived.wait()

    @staticmethod
    def _unwrap(envelope, cause=None):
        if not isinstance(envelope, dict) or "ok" not in envelope:
            raise SbioError(f"the server answered with a non-envelope ack: {envelope!r}")
        if envelope["ok"]:
            return envelope.get("data")
        error = envelope.get("error") or {}
        exc = CallError(error.get("code", "unknown"), error.get("message", ""))
        if cause is not None:
            raise exc from cause
        raise exc

    def call(self, event, *args, timeout=None):
        """Call *event* with an ack; return its data or raise :class:`CallError`."""
        envelope, cause = self._call(event, args, timeout)
        return self._unwrap(envelope, cause)

    def call_envelope(self, event, *args, timeout=None):
        """Call *event* with an ack and return the raw envelope dict."""
        return self._call(event, args, timeout)[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disconnect()

    # -- live data ---------------------------------------------------------------

    def subscribe(self, event, *args, id=None, timeout=None):
        """Subscribe to ``on_<event>(*args)``; return a :class:`Subscription`.

        The first result is in ``.data``; later ``sbio:update`` pushes land in
        ``.updates`` / ``.errors``. Subscribing again with the same *id*
        replaces the subscription (a new :class:`Subscription` is returned).
        Raises :class:`CallError` when the server refuses it.
        """
        sub_id = f"s{next(self._sub_ids)}" if id is None else id
        sub = Subscription(self, sub_id, event, list(args))
        old = self.subscriptions.get(sub_id)
        if old is not None:
            old.active = False
        # Registered first: an update may overtake the ack.
        self.subscriptions[sub_id] = sub
        payload = {"id": sub_id, "event": event, "args": list(args)}
        try:
            envelope, cause = self._call("sbio:subscribe", [payload], timeout)
            if cause is None and isinstance(envelope, dict) and not envelope.get("ok", True):
                cause = self._take_server_error(event)
            data = self._unwrap(envelope, cause)
        except BaseException:
            if self.subscriptions.get(sub_id) is sub:
                del self.subscriptions[sub_id]
            sub.active = False
            raise
        if not sub.updates:  # an update that overtook the ack is fresher
            sub.data = data
        return sub

    def unsubscribe(self, *subs, timeout=None):
        """End subscriptions (:class:`Subscription` objects or ids); one ``{"ids"}`` call."""
        ids = [s.id if isinstance(s, Subscription) else s for s in subs]
        for sub_id in ids:
            sub = self.subscriptions.pop(sub_id, None)
            if sub is not None:
                sub.active = False
        payload = {"id": ids[0]} if len(ids) == 1 else {"ids": ids}
        return self._unwrap(self._call("sbio:unsubscribe", [payload], timeout)[0])

    def _route_update(self, args):
        body = args[0] if args else None
        if isinstance(body, dict):
            sub = self.subscriptions.get(body.get("id"))
            if sub is not None:
                sub._push(body)

    def _take_server_error(self, event):
        """The exception a handler raised for *event* on this connection, if known."""
        return None


class LocalClient(_ClientBase):
    """An in-process socket.io client of one namespace of an (unstarted) :class:`sbio.Server`.

    Packets are encoded and decoded exactly as on the wire and handed to
    python-socketio's packet handling, so the dispatch, ACL, error mapping
    and broadcasts are the real ones; there is just no socket. Several
    clients of the same server see each other's broadcasts.

    :param raise_server_errors: when a handler raises (an ``internal``
        error), the :class:`CallError` carries the original exception as its
        ``__cause__`` so the test shows the server-side traceback.
    """

    _ids = itertools.count(1)

    def __init__(self, server, namespace, auth=None, environ=None, timeout=5,
                 raise_server_errors=True):
        super().__init__(namespace, timeout)
        self.server = server
        self.sio = server.sio
        self.eio_sid = uuid.uuid4().hex
        self.sid = None
        self.connected = False
        self.raise_server_errors = raise_server_errors
        self.handlers = {}  # event -> fn answering server calls
        self._acks = {}
        self._connect_result = gevent.event.AsyncResult()
        self._environ = environ or self._default_environ()
        _Router.of(server).add(self)
        feed_connect(self.sio, self.eio_sid, self._environ)
        self._feed(sio_packet.Packet(sio_packet.CONNECT, data=auth, namespace=namespace))
        ok, payload = self._connect_result.get(timeout=timeout)
        if not ok:
            _Router.of(server).remove(self)
            feed_disconnect(self.sio, self.eio_sid, "client disconnect")
            payload = payload or {}
            raise ConnectionRefused(payload.get("message", "Connection refused"),
                                    payload.get("data"))
        self.sid = payload["sid"]
        self.connected = True

    @staticmethod
    def _default_environ():
        from werkzeug.test import EnvironBuilder

        environ = EnvironBuilder(path="/socket.io/", base_url="http://127.0.0.1/").get_environ()
        environ["REMOTE_ADDR"] = "127.0.0.1"
        return environ

    @property
    def instance(self):
        """The server-side Namespace instance of this connection."""
        return self.server.dispatcher(self.namespace).instances.get(self.sid)

    def on(self, event, fn):
        """Answer the server's ``call(event, ...)`` with ``fn(*args)``; also record it."""
        self.handlers[event] = fn

    def _feed(self, pkt):
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            feed_message(self.sio, self.eio_sid, part)

    def _deliver(self, text):
        """A packet the server sent to this client."""
        pkt = sio_packet.Packet(encoded_packet=text)
        if pkt.namespace not in (None, self.namespace) and (pkt.namespace or "/") != self.namespace:
            return
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            self._connect_result.set((True, pkt.data))
        elif kind == sio_packet.CONNECT_ERROR:
            if self._connect_result.ready():  # a refusal after we connected
                self._record("connect_error", [pkt.data])
            else:
                self._connect_result.set((False, pkt.data))
        elif kind == sio_packet.DISCONNECT:
            self.connected = False
            self._record("disconnect", ["server disconnect"])  # as python-socketio says
        elif kind == sio_packet.ACK:
            waiter = self._acks.pop(pkt.id, None)
            if waiter is not None:
                waiter.set(pkt.data[0] if pkt.data else None)
        elif kind == sio_packet.EVENT:
            event, args = pkt.data[0], pkt.data[1:]
            self._record(event, args)
            if pkt.id is not None:
                # Answer in a greenlet of our own, as a remote client would:
                # never inside the server's send path.
                gevent.spawn(self._answer, event, args, pkt.id)

    def _answer(self, event, args, ack_id):
        fn = self.handlers.get(event)
        reply = fn(*args) if fn is not None else None
        data = list(reply) if isinstance(reply, tuple) else [reply]
        if self.connected:
            self._feed(sio_packet.Packet(sio_packet.ACK, namespace=self.namespace,
                                         id=ack_id, data=data))

    def _call(self, event, args, timeout):
        self._require_connected()
        timeout = self.timeout if timeout is None else timeout
        ack_id = next(self._ids)
        waiter = gevent.event.AsyncResult()
        self._acks[ack_id] = waiter
        self._feed(sio_packet.Packet(sio_packet.EVENT, namespace=self.namespace,
                                     data=[event, *args], id=ack_id))
        try:
            envelope = waiter.get(timeout=timeout)
        except gevent.Timeout:
            self._acks.pop(ack_id, None)
            raise SbioTimeoutError(f"no ack for {event!r} within {timeout}s") from None
        cause = None
        if self.raise_server_errors and self.instance is not None:
            cause = _ErrorCapture.of(self.server).take(self.sid, event)
        return envelope, cause

    def emit(self, event, *args):
        """Emit *event* without an ack (failures come back as ``sbio:error``)."""
        self._require_connected()
        self._feed(sio_packet.Packet(sio_packet.EVENT, namespace=self.namespace,
                                     data=[event, *args]))

    def send_raw(self, text):
        """Feed a raw socket.io packet string (for malformed-input tests)."""
        feed_message(self.sio, self.eio_sid, text)

    def _take_server_error(self, event):
        if not self.raise_server_errors or self.sid is None:
            return None
        return _ErrorCapture.of(self.server).take(self.sid, event)

    def _require_connected(self):
        if not self.connected:
            raise SbioError(f"{self!r} is not connected")

    def disconnect(self):
        """Leave the namespace and close the (virtual) connection. Idempotent."""
        if self.eio_sid is None:
            return
        if self.connected:
            self._feed(sio_packet.Packet(sio_packet.DISCONNECT, namespace=self.namespace))
        feed_disconnect(self.sio, self.eio_sid, "client disconnect")
        _Router.of(self.server).remove(self)
        self.connected = False
        self.eio_sid = None

    def __repr__(self):
        return f"<LocalClient {self.namespace} sid={self.sid}>"


class _Router:
    """Routes what an in-process server sends to the LocalClient of each eio sid."""

    def __init__(self, server):
        self.clients = {}
        capture_output(server.sio, self.send_packet, self.disconnect)
        server._sbio_router = self

    @classmethod
    def of(cls, server):
        return getattr(server, "_sbio_router", None) or cls(server)

    def add(self, client):
        self.clients[client.eio_sid] = client

    def remove(self, client):
        self.clients.pop(client.eio_sid, None)

    def send_packet(self, eio_sid, pkt):
        client = self.clients.get(eio_sid)
        if client is not None and pkt.packet_type == eio_packet.MESSAGE:
            client._deliver(pkt.data)

    def disconnect(self, eio_sid=None, reason=None):
        targets = list(self.clients.values()) if eio_sid is None else \
            [c for c in [self.clients.get(eio_sid)] if c is not None]
        for client in targets:
            client.disconnect()


class _ErrorCapture:
    """Keeps the last handler exception per (sid, event) for LocalClient's ``__cause__``."""

    def __init__(self, server):
        self.errors = {}
        for dispatcher in server.sio.dispatchers.values():
            self.attach(dispatcher)
        server._sbio_error_capture = self

    def attach(self, dispatcher):
        if self.record not in dispatcher.error_hooks:
            dispatcher.error_hooks.append(self.record)

    @classmethod
    def of(cls, server):
        return getattr(server, "_sbio_error_capture", None) or cls(server)

    def record(self, instance, event, exc):
        self.errors[(instance.sid, event)] = exc

    def take(self, sid, event):
        return self.errors.pop((sid, event), None)


class LiveClient(_ClientBase):
    """A python-socketio client connected to a running server over a real socket.

    :param url: the server's URL (``server.url``).
    :param namespace: the namespace to connect to.
    :param transports: ``["websocket"]`` (default), ``["polling"]``, or both.
    """

    def __init__(self, url, namespace, auth=None, transports=("websocket",), timeout=5,
                 headers=None):
        import socketio

        super().__init__(namespace, timeout)
        self.client = socketio.Client(reconnection=False)
        self._refusal = None

        def on_any(event, *args):
            self._record(event, args)

        def on_connect_error(data=None):
            self._refusal = data if isinstance(data, dict) else {"message": str(data)}

        def on_disconnect(reason=None):
            self._record("disconnect", [reason])

        self.client.on("*", on_any, namespace=namespace)
        self.client.on("connect_error", on_connect_error, namespace=namespace)
        self.client.on("disconnect", on_disconnect, namespace=namespace)
        try:
            self.client.connect(url, namespaces=[namespace], auth=auth,
                                transports=list(transports), headers=headers or {},
                                wait_timeout=timeout)
        except Exception as exc:
            # abort: a polling transport would otherwise wait out its long-poll
            self.client.eio.disconnect(abort=True)
            if self._refusal is not None:
                raise ConnectionRefused(self._refusal.get("message", "Connection refused"),
                                        self._refusal.get("data")) from None
            raise ConnectionError(f"cannot connect to {url}{namespace}: {exc}") from exc

    @property
    def sid(self):
        return self.client.get_sid(self.namespace)

    @property
    def connected(self):
        return self.client.connected and self.namespace in self.client.namespaces

    def _call(self, event, args, timeout):
        import socketio

        timeout = self.timeout if timeout is None else timeout
        try:
            return self.client.call(event, tuple(args), namespace=self.namespace,
                                    timeout=timeout), None
        except socketio.exceptions.TimeoutError:
            raise SbioTimeoutError(f"no ack for {event!r} within {timeout}s") from None

    def emit(self, event, *args):
        """Emit *event* without an ack."""
        self.client.emit(event, tuple(args), namespace=self.namespace)

    def disconnect(self):
        """Disconnect. Idempotent."""
        self.client.disconnect()

    def __repr__(self):
        return f"<LiveClient {self.namespace}>"


class Subscription:
    """A live subscription of a test client (from ``client.subscribe(...)``).

    ``data`` is the latest result (the first one, then each update);
    ``updates`` the data of every ``sbio:update`` received after the first
    result; ``errors`` every pushed error (``{"code", "message"}``);
    ``pushes`` every raw ``sbio:update`` body, in order.
    """

    __test__ = False

    def __init__(self, client, id, event, args):
        self.client = client
        self.id = id
        self.event = event
        self.args = args
        self.data = None
        self.updates = []
        self.errors = []
        self.pushes = []
        self.active = True
        self._seen = 0

    def __repr__(self):
        return f"<Subscription {self.id!r} {self.event}{tuple(self.args)!r}>"

    def _push(self, body):
        self.pushes.append(body)
        if body.get("error") is not None:
            self.errors.append(body["error"])
        else:
            self.data = body.get("data")
            self.updates.append(self.data)

    def wait_update(self, timeout=None):
        """Wait for the next push not yet returned by this method; return its data.

        An error push raises :class:`CallError` (with the server's exception
        as ``__cause__`` for an in-process client, when known). Raises
        :class:`~sbio.SbioTimeoutError` (a :class:`TimeoutError`) after *timeout*
        seconds (the client's default).
        """
        client = self.client
        timeout = client.timeout if timeout is None else timeout
        with gevent.Timeout(timeout, SbioTimeoutError(
                f"no sbio:update for subscription {self.id!r} ({self.event}) within "
                f"{timeout}s ({len(self.pushes)} received, {self._seen} already seen)")):
            while len(self.pushes) <= self._seen:
                client._arrived.clear()
                client._arrived.wait()
        body = self.pushes[self._seen]
        self._seen += 1
        error = body.get("error")
        if error is not None:
            exc = CallError(error.get("code", "unknown"), error.get("message", ""))
            cause = client._take_server_error(self.event)
            if cause is not None:
                raise exc from cause
            raise exc
        return body.get("data")

    def unsubscribe(self, timeout=None):
        """End this subscription."""
        return self.client.unsubscribe(self, timeout=timeout)


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
def sbio_config():
    """sbio's configuration for the test servers: defaults, 127.0.0.1, a free port."""
    from ..config import load_sbio_config

    return load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                       "server.secret_key": "sbio-tests"})


@pytest.fixture
def sbio_client(sbio_config):
    """Factory: ``sbio_client(NamespaceClass, auth=None, **kw) -> LocalClient``.

    Every client of one test shares one in-process server hosting the
    classes asked for, so broadcasts between them work. Clients still
    connected are disconnected after the test.
    """
    from ..server import Server

    state = {"server": None, "clients": []}

    def make(cls, auth=None, **kwargs):
        server = state["server"]
        if server is None:
            server = state["server"] = Server(config=sbio_config)
        if cls.name not in server.namespaces:
            dispatcher = server.add_namespace(cls)
            _ErrorCapture.of(server).attach(dispatcher)
        client = LocalClient(server, cls.name, auth=auth, **kwargs)
        state["clients"].append(client)
        return client

    yield make
    for client in state["clients"]:
        client.disconnect()
    if state["server"] is not None:
        state["server"].stop(timeout=5)


@pytest.fixture
def sbio_server(sbio_config):
    """Factory: ``sbio_server(*namespace_classes, app=None) -> started sbio.Server``.

    The server listens on a free loopback port (``server.url``) and is
    stopped after the test.
    """
    from ..server import Server

    servers = []

    def make(*namespaces, app=None, config=None):
        server = Server(namespaces, config=config or sbio_config, app=app)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=5)


@pytest.fixture
def sbio_live_client():
    """Factory: ``sbio_live_client(server, "/ns", auth=None, transports=("websocket",))``.

    Returns a connected :class:`LiveClient`; disconnected after the test.
    """
    clients = []

    def make(server, namespace, **kwargs):
        url = server if isinstance(server, str) else server.url
        client = LiveClient(url, namespace, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
