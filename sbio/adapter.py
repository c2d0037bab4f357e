"""The one place sbio touches python-socketio's, python-engineio's and gevent-websocket's internals.

Everything here overrides or calls a private method of those libraries;
each override names the upstream function it replaces, the upstream versions
it was written against, and why. No other sbio module may name a private
attribute of them (``tests/test_architecture.py`` checks it). When upgrading
one of these libraries, this file is the one to read against its changes.

* :class:`SocketIOServer` — ``socketio.Server`` whose connect / event / ack /
  disconnect handling routes sbio namespaces to their
  :class:`~sbio.dispatch.NamespaceDispatcher` (one Namespace instance per
  connection) and answers malformed packets instead of raising them into
  Engine.IO.
* :class:`_LimitedWebSocket`, :class:`_SbioWebSocketHandler`,
  :func:`websocket_handler_class` — gevent-websocket with a message size limit,
  faster unmasking and UTF-8 checks, close codes that are sent, the origin
  check before the upgrade, TCP_NODELAY.
* :func:`close_transports` — close every Engine.IO connection at shutdown
  without telling socket.io clients not to reconnect.
"""
import logging
import re
import socket
import struct

import gevent
import socketio
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, WebSocket
from socketio import packet as sio_packet

from .dispatch import ERROR_EVENT, NamespaceDispatcher, _short, error_envelope

__all__ = ["SocketIOServer", "MessageTooBig", "websocket_handler_class", "close_transports"]

log = logging.getLogger(__name__)


class SocketIOServer(socketio.Server):
    """``socketio.Server`` with sbio's per-connection dispatch (see the module doc)."""

    def __init__(self, sbio_server, **kwargs):
        self.sbio_server = sbio_server
        #: namespace name -> NamespaceDispatcher
        self.dispatchers = {}
        super().__init__(**kwargs)

    def add_namespace_class(self, cls):
        dispatcher = NamespaceDispatcher(self.sbio_server, cls)
        self.dispatchers[cls.name] = dispatcher
        if self.namespaces != "*" and cls.name not in self.namespaces:
            self.namespaces = list(self.namespaces) + [cls.name]
        return dispatcher

    # -- overrides of python-socketio internals --------------------------------------
    # Written against python-socketio 5.12-5.18 (socketio/server.py); 5.12 is
    # the first whose _handle_eio_disconnect takes a ``reason``. Each override
    # calls the upstream method for everything it does not change.

    # Replaces socketio.Server._handle_connect (5.12-5.18): upstream answers a
    # connect to an unknown namespace with a bare "Unable to connect" string
    # (clients expect {"message": ...}), and lets a second CONNECT to a joined
    # namespace make a second sid. Both get a CONNECT_ERROR with a message
    # here; the rest is upstream's.
    def _handle_connect(self, eio_sid, namespace, data):
        namespace = namespace or "/"
        if namespace not in self.dispatchers and namespace not in self.handlers \
                and namespace not in self.namespace_handlers:
            log.info("connect to unknown namespace %s refused", _short(namespace))
            self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, data={"message": "Invalid namespace"},
                namespace=namespace))
            return
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, namespace=namespace,
                data={"message": "Already connected to this namespace"}))
            return
        super()._handle_connect(eio_sid, namespace, data)

    # Replaces socketio.Server._trigger_event (5.12-5.18) for sbio namespaces:
    # upstream calls one singleton handler; sbio's connect/disconnect go to the
    # namespace's NamespaceDispatcher (one instance per connection).
    def _trigger_event(self, event, namespace, *args):
        dispatcher = self.dispatchers.get(namespace)
        if dispatcher is not None:
            if event == "connect":
                return dispatcher.connect(*args)
            if event == "disconnect":
                return dispatcher.disconnect(*args)
        return super()._trigger_event(event, namespace, *args)

    # Replaces socketio.Server._handle_event_internal (5.12-5.18) for sbio
    # namespaces: upstream triggers the handler and acks its raw return value;
    # sbio runs NamespaceDispatcher.handle_event, acks the envelope (or pushes
    # sbio:error when there is no ack) and never lets an exception escape.
    def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
        dispatcher = self.dispatchers.get(namespace)
        if dispatcher is None:
            return super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        event = data[0] if data else None
        try:
            envelope = dispatcher.handle_event(sid, event, data[1:])
        except Exception:  # a bug in sbio itself: still answer
            log.exception("dispatch failed (sid=%s namespace=%s event=%s)", sid, namespace, event)
            envelope = error_envelope("internal", "internal server error")
        if id is not None:
            self._send_ack(eio_sid, namespace, id, envelope, sid, event)
        elif not envelope["ok"]:
            self.push_error(eio_sid, namespace, event, envelope["error"])

    # Not an override: upstream's ack path (socketio.Server._handle_event_internal
    # -> _send_packet) raises on an unserializable value; this one answers
    # ``internal`` instead. Uses the public packet class and Engine.IO's send().
    def _send_ack(self, eio_sid, namespace, id, envelope, sid, event):
        pkt = self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=[envelope])
        try:
            encoded = pkt.encode()
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("result of handler is not JSON-serializable (sid=%s namespace=%s "
                      "event=%s): %s", sid, namespace, event, exc)
            pkt = self.packet_class(
                sio_packet.ACK, namespace=namespace, id=id,
                data=[error_envelope("internal", "the handler returned a value that "
                                     "cannot be sent as JSON")])
            encoded = pkt.encode()
        self._send_encoded(eio_sid, encoded)

    def _send_encoded(self, eio_sid, encoded):
        if isinstance(encoded, list):
            for part in encoded:
                self.eio.send(eio_sid, part)
        else:
            self.eio.send(eio_sid, encoded)

    def push_error(self, eio_sid, namespace, event, error):
        """Send ``sbio:error`` ``{"event", "code", "message"}`` to one connection."""
        body = {"event": event if isinstance(event, str) else None}
        body.update(error)
        self._send_packet(eio_sid, self.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[ERROR_EVENT, body]))

    # Replaces socketio.Server._handle_eio_message (5.12-5.18): upstream lets a
    # packet it cannot decode raise into Engine.IO, which logs a traceback and
    # answers nothing. sbio logs it once and tells the client (_bad_packet).
    def _handle_eio_message(self, eio_sid, data):
        try:
            super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            # Handlers never raise here (connect is wrapped; events run in their
            # own greenlets): what does is a packet python-socketio cannot use.
            self._bad_packet(eio_sid, data, exc)

    # Replaces socketio.Server._handle_event (5.12-5.18): upstream indexes
    # ``data[0]`` and crashes on an EVENT whose payload is not a non-empty
    # array; sbio answers bad_request (ack or sbio:error push).
    def _handle_event(self, eio_sid, namespace, id, data):
        if type(data) is not list or not data:
            namespace = namespace or "/"
            problem = {"code": "bad_request",
                       "message": "malformed packet: an event is a non-empty JSON array"}
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            log.warning("malformed event packet from %s (namespace %s)", sid or eio_sid,
                        _short(namespace))
            if sid is None or namespace not in self.dispatchers:
                return
            if id is not None:
                self._send_ack(eio_sid, namespace, id, {"ok": False, "error": problem},
                               sid, None)
            else:
                self.push_error(eio_sid, namespace, None, problem)
            return
        super()._handle_event(eio_sid, namespace, id, data)

    # Replaces socketio.Server._handle_ack (5.12-5.18): drops acks without an
    # id or with a non-array payload before upstream's callback lookup.
    def _handle_ack(self, eio_sid, namespace, id, data):
        # python-socketio keeps its ack-id counter under id 0: a client ack
        # with id 0 (or without an id) would corrupt it.
        if not id or type(data) is not list:
            log.warning("ignoring a malformed ack packet from %s (id %r)", eio_sid, id)
            return
        super()._handle_ack(eio_sid, namespace, id, data)

    _PACKET_NAMESPACE = re.compile(r"\d(?:\d+-)?(/[^,]*),")

    def _bad_packet(self, eio_sid, data, exc):
        """A packet that does not decode: tell the client if we know its namespace."""
        namespace = "/"
        if isinstance(data, str):
            match = self._PACKET_NAMESPACE.match(data)
            if match:
                namespace = match.group(1)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        log.warning("malformed packet from %s (namespace %s): %s", sid or eio_sid,
                    _short(namespace), exc)
        if sid is not None and namespace in self.dispatchers:
            self.push_error(eio_sid, namespace, None, {
                "code": "bad_request", "message": f"malformed packet: {exc}"})

    # Replaces socketio.Server._handle_eio_disconnect (5.12-5.18; the
    # ``reason`` argument is new in 5.12): also drops sbio's connection_session
    # of that Engine.IO socket, whatever upstream raised.
    def _handle_eio_disconnect(self, eio_sid, reason):
        try:
            super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.sbio_server._connection_sessions.pop(eio_sid, None)


#: First characters of Engine.IO v4 text packets (open ... noop).
_EIO_PACKET_TYPES = frozenset("0123456")


class MessageTooBig(Exception):
    """An incoming websocket message is larger than the configured limit."""


def _unmask(mask, payload):
    """XOR *payload* with the 4-byte websocket *mask* (one big-integer XOR, not a byte loop)."""
    length = len(payload)
    key = (bytes(mask) * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little")


class _LimitedWebSocket(WebSocket):
    """gevent-websocket's WebSocket, with a size limit and the hot spots in C.

    * gevent-websocket reads a whole frame before anyone can look at its
      size; this checks the frame header first, so an oversize message is
      refused before it is read, with close code 1009 ("message too big") and
      a reason naming the limit.
    * Unmasking is one big-integer XOR instead of a Python loop over bytes,
      and UTF-8 is checked once by ``bytes.decode`` instead of gevent-websocket's
      pure-Python validator (an invalid text message still closes with 1007).
      Measured with ``bench/``: together about a fifth of the server's CPU per
      small message.
    * ``close(code)`` sends its code (gevent-websocket's drops it).
    """

    # WebSocket has __slots__: the limit is a class attribute of a per-server
    # subclass, and the running byte count lives on the (per-connection) handler.
    __slots__ = ()
    max_message_size = None

    # Replaces geventwebsocket.websocket.WebSocket.read_frame (0.10.1):
    # checks the size from the header before reading the payload, unmasks in C.
    def read_frame(self):
        header = Header.decode_header(self.stream)
        handler = self.handler
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY):
            handler.sbio_message_bytes = 0
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY, self.OPCODE_CONTINUATION):
            handler.sbio_message_bytes += header.length
            if handler.sbio_message_bytes > self.max_message_size:
                raise MessageTooBig(handler.sbio_message_bytes)
        if header.flags:
            from geventwebsocket.exceptions import ProtocolError
            raise ProtocolError
        if not header.length:
            return header, b""
        payload = self.raw_read(header.length)
        if len(payload) != header.length:
            from geventwebsocket.exceptions import WebSocketError
            raise WebSocketError("Unexpected EOF reading frame payload")
        if header.mask:
            payload = _unmask(header.mask, payload)
        return header, payload

    # Replaces geventwebsocket.websocket.WebSocket.validate_utf8 (0.10.1), a
    # pure-Python validator run per frame: _decode_bytes checks once, in C.
    def validate_utf8(self, payload):
        """No per-frame check: ``_decode_bytes`` validates the whole message (in C)."""

    # Replaces geventwebsocket.websocket.WebSocket._decode_bytes (0.10.1):
    # strict decoding, so invalid UTF-8 still raises (and closes with 1007).
    def _decode_bytes(self, bytestring):
        return bytestring.decode("utf-8") if bytestring else ""

    # Replaces geventwebsocket.websocket.WebSocket.close (0.10.1), which
    # drops the close code it is given.
    def close(self, code=1000, message=b""):
        if self.closed:
            return
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        self.close_with(code, message or "")

    # Extends geventwebsocket.websocket.WebSocket.receive (0.10.1): answers an
    # oversize message with close 1009 and a non-Engine.IO text frame with 1002.
    def receive(self):
        try:
            message = super().receive()
        except MessageTooBig as exc:
            reason = f"message too big: {exc.args[0]} bytes, limit {self.max_message_size}"
            log.info("closing websocket from %s: %s",
                     self.environ.get("REMOTE_ADDR"), reason)
            sock = getattr(self.handler, "socket", None)
            self.close_with(1009, reason)
            self._drain(sock)
            return None
        if isinstance(message, str) and (not message or message[0] not in _EIO_PACKET_TYPES):
            # Engine.IO would raise on it outside its own error handling and
            # leave the connection's namespaces alive until the ping timeout.
            log.info("closing websocket from %s: not an Engine.IO packet: %r",
                     self.environ.get("REMOTE_ADDR"), message[:40])
            self.close_with(1002, "not an Engine.IO packet")
            return None
        return message

    def _drain(self, sock, seconds=2.0, max_bytes=16 * 1024 * 1024):
        """Read and discard what the client is still sending, briefly.

        Closing a socket with unread input makes the kernel reset the
        connection, and the client may lose the close frame (and its reason)
        with it. A bounded lingering read, as HTTP servers do, avoids that.
        """
        if sock is None:
            return
        drained = 0
        with gevent.Timeout(seconds, False):
            while drained < max_bytes:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                drained += len(chunk)

    def close_with(self, code, reason):
        """Send a close frame with *code* and *reason*, then close.

        (gevent-websocket's own ``close`` drops the code.)
        """
        from geventwebsocket.exceptions import WebSocketError

        try:
            payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
            self.send_frame(payload, opcode=self.OPCODE_CLOSE)
        except WebSocketError:
            log.debug("could not send the close frame", exc_info=True)
        finally:
            self.closed = True
            self.stream = None
            self.raw_write = None
            self.raw_read = None


class _SbioWebSocketHandler(WebSocketHandler):
    """gevent-websocket's handler, using :class:`_LimitedWebSocket`."""

    #: a per-server subclass of _LimitedWebSocket carrying the limit
    websocket_class = None
    #: the Engine.IO server whose origin policy applies
    engineio_server = None
    #: set TCP_NODELAY on each accepted socket (``server.tcp_nodelay``)
    tcp_nodelay = False
    sbio_message_bytes = 0

    def handle(self):
        # Once per accepted connection. Without TCP_NODELAY, Nagle's algorithm
        # holds a small write while an earlier one is unacknowledged, and the
        # client delays its ACK (up to 40 ms): a connection that gets several
        # messages in a row (broadcasts, an update after an ack) stalls.
        if self.tcp_nodelay:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the peer is already gone; nothing to tune
                pass
        return super().handle()

    # Extends geventwebsocket.handler.WebSocketHandler.run_application
    # (0.10.1). Calls engineio's private BaseServer._cors_allowed_origins
    # (python-engineio 4.11-4.15) so the policy is exactly Engine.IO's own.
    def run_application(self):
        # gevent-websocket upgrades before the application runs, so Engine.IO's
        # origin check could only close the socket after a 101. Check first:
        # without the Upgrade header the request reaches Engine.IO as plain
        # HTTP and gets its "400 Not an accepted origin" answer.
        environ = self.environ
        origin = environ.get("HTTP_ORIGIN")
        eio = self.engineio_server
        if origin and eio is not None and environ.get("HTTP_UPGRADE", "").lower() == "websocket" \
                and eio.cors_allowed_origins != []:
            allowed = eio._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                del environ["HTTP_UPGRADE"]
        return super().run_application()

    # Extends geventwebsocket.handler.WebSocketHandler.run_websocket (0.10.1):
    # the handler builds a plain WebSocket in upgrade_connection with no class
    # hook, so its class is swapped (``__class__``) for the per-server subclass
    # carrying the size limit before the first read.
    def run_websocket(self):
        if self.websocket_class is not None and type(self.websocket) is WebSocket:
            self.websocket.__class__ = self.websocket_class
        return super().run_websocket()


def websocket_handler_class(max_message_size, engineio_server, tcp_nodelay):
    """A per-server gevent-websocket handler class for ``gevent.pywsgi.WSGIServer``.

    :param max_message_size: bytes; a bigger websocket message closes with 1009.
    :param engineio_server: the ``engineio.Server`` whose origin policy applies.
    :param tcp_nodelay: set TCP_NODELAY on each accepted socket.
    """
    websocket_class = type("SbioWebSocket", (_LimitedWebSocket,),
                           {"__slots__": (), "max_message_size": max_message_size})
    return type("SbioWebSocketHandler", (_SbioWebSocketHandler,),
                {"websocket_class": websocket_class, "engineio_server": engineio_server,
                 "tcp_nodelay": bool(tcp_nodelay)})


def close_transports(sio, timeout):
    """Close every Engine.IO connection of *sio*; give the CLOSE packets *timeout* s to go out.

    Not ``sio.disconnect()``: its "io server disconnect" tells socket.io
    clients never to reconnect. Not Engine.IO's ``disconnect()`` either: it
    waits without a bound for a long-polling client to fetch its CLOSE.

    Touches engineio.Server.sockets (the sid -> engineio.socket.Socket dict)
    and each socket's ``queue`` (python-engineio 4.11-4.15): there is no public
    "close all without waiting" call. ``Socket.close(wait=False, reason=)`` is
    the signature of engineio 4.11+.
    """
    eio = sio.eio
    sockets, eio.sockets = list(eio.sockets.values()), {}
    for sock in sockets:
        try:
            sock.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
        except Exception:
            log.exception("closing connection %s at shutdown failed", sock.sid)
    with gevent.Timeout(timeout, False):
        for sock in sockets:
            sock.queue.join()
