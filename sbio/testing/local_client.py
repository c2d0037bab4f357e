"""The in-process client :class:`LocalClient`: real packets, the real dispatch, no socket."""
import itertools
import uuid

import gevent
import gevent.event
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..adapter import capture_output, feed_connect, feed_disconnect, feed_message
from ..errors import ConnectionRefused, SbioError, SbioTimeoutError
from .clients import _ClientBase


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
