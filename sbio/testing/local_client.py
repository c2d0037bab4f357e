"""The in-process client :class:`LocalClient`: real packets, the real dispatch, no socket."""
from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..adapter import capture_output, feed_connect, feed_disconnect, feed_message
from ..errors import ConnectionRefused, SbioError, SbioTimeoutError
from .clients import CallError, _ClientBase

if TYPE_CHECKING:
    from ..dispatch import NamespaceDispatcher
    from ..namespace import Namespace
    from ..server import Server

__all__ = ["LocalClient"]

log = logging.getLogger(__name__)

#: what an ack waiter gets when the connection drops before the ack came
_DISCONNECTED = object()


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

    def __init__(self, server: Server, namespace: str, auth: Any = None,
                 environ: dict[str, Any] | None = None, timeout: float = 5,
                 raise_server_errors: bool = True) -> None:
        super().__init__(namespace, timeout)
        self.server = server
        self.sio = server.sio
        self.eio_sid: str | None = uuid.uuid4().hex
        self.sid: str | None = None
        self.connected = False
        self.raise_server_errors = raise_server_errors
        #: event -> fn answering the server's calls
        self.handlers: dict[str, Callable[..., Any]] = {}
        self._acks: dict[int, gevent.event.AsyncResult[Any]] = {}
        #: a binary packet from the server waiting for its attachments
        self._binary: sio_packet.Packet | None = None
        self._connect_result: gevent.event.AsyncResult[tuple[bool, Any]] = \
            gevent.event.AsyncResult()
        self._environ = environ or self._default_environ()
        _Router.of(server).add(self)
        feed_connect(self.sio, self.eio_sid, self._environ)
        self._feed(sio_packet.Packet(sio_packet.CONNECT, data=auth, namespace=namespace))
        answer: tuple[bool, Any] = self._connect_result.get(timeout=timeout) or (False, None)
        ok, payload = answer
        if not ok:
            _Router.of(server).remove(self)
            feed_disconnect(self.sio, self.eio_sid, "client disconnect")
            payload = payload or {}
            raise ConnectionRefused(payload.get("message", "Connection refused"),
                                    payload.get("data"))
        self.sid = payload["sid"]
        self.connected = True

    @staticmethod
    def _default_environ() -> dict[str, Any]:
        from werkzeug.test import EnvironBuilder

        environ = EnvironBuilder(path="/socket.io/", base_url="http://127.0.0.1/").get_environ()
        environ["REMOTE_ADDR"] = "127.0.0.1"
        return environ

    @property
    def instance(self) -> Namespace | None:
        """The server-side Namespace instance of this connection."""
        dispatcher: NamespaceDispatcher = self.server.dispatcher(self.namespace)
        return dispatcher.instances.get(self.sid)

    def on(self, event: str, fn: Callable[..., Any]) -> None:
        """Answer the server's ``call(event, ...)`` with ``fn(*args)``; also record it."""
        self.handlers[event] = fn

    def _feed(self, pkt: sio_packet.Packet) -> None:
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else [encoded]:
            feed_message(self.sio, self.eio_sid, part)

    def _deliver(self, data: str | bytes) -> None:
        """A message the server sent to this client: a packet, or a binary attachment.

        A packet with binary data (BINARY_EVENT, BINARY_ACK) comes as its text
        header, then one message per attachment, as on the wire; it is
        handled once the last attachment is in (python-socketio's client
        reassembles the same way).
        """
        pending = self._binary
        if pending is not None:
            if isinstance(data, str):  # python-socketio's server never does this
                log.warning("%r: a text packet while %d attachment(s) were due: dropped "
                            "the binary packet", self, pending.attachment_count
                            - len(pending.attachments))
                self._binary = None
            else:
                if pending.add_attachment(data):
                    self._binary = None
                    self._handle(pending)
                return
        if not isinstance(data, str):
            log.warning("%r: a binary message no binary packet announced: dropped", self)
            return
        pkt = sio_packet.Packet(encoded_packet=data)
        if pkt.attachment_count:
            self._binary = pkt
            return
        self._handle(pkt)

    def _handle(self, pkt: sio_packet.Packet) -> None:
        """A whole packet from the server, as a socket.io client handles it."""
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
            # A client leaves the namespace here: an ack that still comes (a
            # handler that called self.disconnect() and returned) reaches
            # none, and sbio.js fails the calls in flight as "disconnected".
            self._fail_calls()
        elif kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
            waiter = self._acks.pop(pkt.id, None)
            if waiter is not None and self.connected:
                waiter.set(list(pkt.data or ()))
        elif kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            event, args = pkt.data[0], pkt.data[1:]
            self._record(event, args)
            if pkt.id is not None:
                # Answer in a greenlet of our own, as a remote client would:
                # never inside the server's send path.
                gevent.spawn(self._answer, event, args, pkt.id)

    def _fail_calls(self) -> None:
        """End every call waiting for its ack: the connection is gone."""
        acks, self._acks = self._acks, {}
        for waiter in acks.values():
            waiter.set(_DISCONNECTED)

    def _answer(self, event: str, args: list[Any], ack_id: int) -> None:
        fn = self.handlers.get(event)
        reply = fn(*args) if fn is not None else None
        data = list(reply) if isinstance(reply, tuple) else [reply]
        if self.connected:
            self._feed(sio_packet.Packet(sio_packet.ACK, namespace=self.namespace,
                                         id=ack_id, data=data))

    def _call(self, event: str, args: Any, timeout: float | None
              ) -> tuple[Any, BaseException | None]:
        data, cause = self._call_args(event, args, timeout)
        return (data[0] if data else None), cause

    def _call_raw(self, event: str, args: Any, timeout: float | None) -> list[Any]:
        data, cause = self._call_args(event, args, timeout)
        if cause is not None and data and isinstance(data[0], dict) and "error" in data[0]:
            error = data[0]["error"] or {}
            raise CallError(error.get("code", "unknown"), error.get("message", "")) from cause
        return data

    def _call_args(self, event: str, args: Any, timeout: float | None
                   ) -> tuple[list[Any], BaseException | None]:
        self._require_connected()
        timeout = self.timeout if timeout is None else timeout
        ack_id = next(self._ids)
        waiter: gevent.event.AsyncResult[Any] = gevent.event.AsyncResult()
        self._acks[ack_id] = waiter
        self._feed(sio_packet.Packet(sio_packet.EVENT, namespace=self.namespace,
                                     data=[event, *args], id=ack_id))
        try:
            data: Any = waiter.get(timeout=timeout)
        except gevent.Timeout:
            self._acks.pop(ack_id, None)
            raise SbioTimeoutError(f"no ack for {event!r} within {timeout}s") from None
        if data is _DISCONNECTED:
            raise CallError("disconnected", f"the connection dropped before {event!r} was "
                            "answered")
        cause = None
        if self.raise_server_errors and self.instance is not None:
            cause = _ErrorCapture.of(self.server).take(self.sid, event)
        return data, cause

    def emit(self, event: str, *args: Any) -> None:
        """Emit *event* without an ack (failures come back as ``sbio:error``)."""
        self._require_connected()
        self._feed(sio_packet.Packet(sio_packet.EVENT, namespace=self.namespace,
                                     data=[event, *args]))

    def send_raw(self, text: str | bytes) -> None:
        """Feed a raw socket.io packet string (for malformed-input tests)."""
        feed_message(self.sio, self.eio_sid, text)

    def _take_server_error(self, event: str) -> BaseException | None:
        if not self.raise_server_errors or self.sid is None:
            return None
        return _ErrorCapture.of(self.server).take(self.sid, event)

    def _require_connected(self) -> None:
        if not self.connected:
            raise SbioError(f"{self!r} is not connected")

    def disconnect(self) -> None:
        """Leave the namespace and close the (virtual) connection. Idempotent.

        Calls still waiting for their ack raise :class:`CallError` with code
        ``"disconnected"``.
        """
        if self.eio_sid is None:
            return
        if self.connected:
            self._feed(sio_packet.Packet(sio_packet.DISCONNECT, namespace=self.namespace))
        feed_disconnect(self.sio, self.eio_sid, "client disconnect")
        _Router.of(self.server).remove(self)
        self.connected = False
        self.eio_sid = None
        self._binary = None
        self._fail_calls()

    def __repr__(self) -> str:
        return f"<LocalClient {self.namespace} sid={self.sid}>"


class _Router:
    """Routes what an in-process server sends to the LocalClient of each eio sid."""

    def __init__(self, server: Server) -> None:
        self.clients: dict[str, LocalClient] = {}
        capture_output(server.sio, self.send_packet, self.disconnect)
        server._sbio_router = self  # type: ignore[attr-defined]

    @classmethod
    def of(cls, server: Server) -> _Router:
        router: _Router | None = getattr(server, "_sbio_router", None)
        return router or cls(server)

    def add(self, client: LocalClient) -> None:
        if client.eio_sid is not None:
            self.clients[client.eio_sid] = client

    def remove(self, client: LocalClient) -> None:
        if client.eio_sid is not None:
            self.clients.pop(client.eio_sid, None)

    def send_packet(self, eio_sid: str, pkt: eio_packet.Packet) -> None:
        client = self.clients.get(eio_sid)
        if client is not None and pkt.packet_type == eio_packet.MESSAGE:
            client._deliver(pkt.data)

    def disconnect(self, eio_sid: str | None = None, reason: Any = None) -> None:
        targets = list(self.clients.values()) if eio_sid is None else \
            [c for c in [self.clients.get(eio_sid)] if c is not None]
        for client in targets:
            client.disconnect()


class _ErrorCapture:
    """Keeps the last handler exception per (sid, event) for LocalClient's ``__cause__``."""

    def __init__(self, server: Server) -> None:
        self.errors: dict[tuple[str | None, str | None], BaseException] = {}
        for dispatcher in server.sio.dispatchers.values():
            self.attach(dispatcher)
        server._sbio_error_capture = self  # type: ignore[attr-defined]

    def attach(self, dispatcher: NamespaceDispatcher) -> None:
        if self.record not in dispatcher.error_hooks:
            dispatcher.error_hooks.append(self.record)

    @classmethod
    def of(cls, server: Server) -> _ErrorCapture:
        capture: _ErrorCapture | None = getattr(server, "_sbio_error_capture", None)
        return capture or cls(server)

    def record(self, instance: Namespace, event: str | None, exc: BaseException) -> None:
        self.errors[(instance.sid, event)] = exc

    def take(self, sid: str | None, event: str | None) -> BaseException | None:
        return self.errors.pop((sid, event), None)
