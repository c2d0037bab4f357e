"""The one place sbio touches python-socketio's, python-engineio's and gevent-websocket's internals.

Everything here overrides or calls a private method of those libraries;
each override names the upstream function it replaces, the upstream versions
it was written against, and why. No other sbio module may name a private
attribute of them (``tests/test_architecture.py`` checks it). When upgrading
one of these libraries, this file is the one to read against its changes.

* :class:`SocketIOServer` — ``socketio.Server`` whose connect / event / ack /
  disconnect handling routes sbio namespaces to their
  :class:`~sbio.dispatch.NamespaceDispatcher` (one Namespace instance per
  connection). Its inbound packet path is strict, like socket.io's reference
  server: a packet that breaks the protocol closes the connection (logged
  once); binary attachments are bounded in count and bytes; a connection
  that joins no namespace within ``server.connect_timeout`` is closed.
  What is sent to a namespace while its ``on_connect`` runs is held and
  sent right after the CONNECT acknowledgement (none of it on a refusal).
* :class:`_StrictEngineSocket` — python-engineio's Socket: a polling POST is
  taken whole (a per-server packet limit derived from
  ``server.max_message_size``) or refused with 400; a client PING closes;
  its ping greenlet ends when it closes.
* :class:`_LimitedWebSocket`, :class:`_SbioWebSocketHandler`,
  :func:`websocket_handler_class` — gevent-websocket with a message size limit,
  faster unmasking and UTF-8 checks, close codes that are sent, the origin
  check before the upgrade, TCP_NODELAY, a registry of websockets that
  survives a reused client address.
* :func:`close_transports` — close every Engine.IO connection at shutdown
  without telling socket.io clients not to reconnect.
* :func:`send_text`, :func:`text_sender` — send already-encoded socket.io packets (the
  live-data fan-out, see :class:`sbio.protocol.UpdateEncoder`).
* :func:`feed_connect`, :func:`feed_message`, :func:`feed_disconnect`,
  :func:`capture_output` — drive a server's packet handling without a
  socket, and catch what it sends (``sbio.testing``).
* :class:`ClientSocket` — python-socketio's threaded client for
  :class:`sbio.Client`: packets handled in order on one thread, events
  handed over with a reply function, a server's DISCONNECT told apart from
  a dropped transport.
* :class:`RedisManagerBase` — python-socketio's Redis manager with its
  transport (publish / listen) handed to public-named methods that
  :class:`sbio.cluster.RedisManager` implements.
* :func:`outbound_backlogs`, :func:`instrument_admin` — for :mod:`sbio.ops`:
  the outbound queues of a server's connections, and python-socketio's
  Admin UI instrumentation confined to one server.
"""
import contextlib
import functools
import logging
import os
import queue
import re
import socket
import struct
import threading
import time
import urllib.parse
from typing import Any

import engineio
import gevent
import gevent.pool
import gevent.queue
import socketio
import socketio.admin
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import Client, WebSocketHandler
from geventwebsocket.websocket import Header, WebSocket
from socketio import packet as sio_packet

from .dispatch import NamespaceDispatcher
from .limits import ABUSE_WINDOW, BadJSON, ConnectionGuard, Limits, StrictJSON
from .protocol import error_envelope, error_push_packet
from .protocol import short_repr as _short

__all__ = ["SocketIOServer", "ProtocolViolation", "MessageTooBig", "websocket_handler_class",
           "close_transports", "send_text", "text_sender", "feed_connect", "feed_message",
           "feed_disconnect", "capture_output", "RedisManagerBase", "ConnectionLimitedWSGIServer",
           "connection_cap", "ClientSocket", "outbound_backlogs", "instrument_admin"]

log = logging.getLogger(__name__)


class SocketIOServer(socketio.Server):
    """``socketio.Server`` with sbio's per-connection dispatch (see the module doc)."""

    #: set by socketio.Server: "*" or the list of namespace names served
    namespaces: Any

    def __init__(self, sbio_server, **kwargs):
        self.sbio_server = sbio_server
        #: namespace name -> NamespaceDispatcher
        self.dispatchers = {}
        #: the per-connection limits of ``[server]`` (see :mod:`sbio.limits`)
        self.limits = Limits(sbio_server.config["server"])
        #: eio_sid -> ConnectionGuard
        self.guards = {}
        #: the server's JSON provider (sbio.jsonenc): every value this server sends
        self.json = sbio_server.json
        #: callables(namespace, event, code) told of each event the limits refused
        #: before dispatch (sbio.ops.metrics counts them)
        self.refusal_hooks = []
        # python-socketio's `json=` argument would set the json module of its
        # Packet class for every server in the process (socketio.base_server,
        # 5.x: ``self.packet_class.json = json``): a subclass of our own.
        kwargs.setdefault("serializer", _packet_class(self.limits.max_json_depth, self.json))
        super().__init__(**kwargs)
        server_cfg = sbio_server.config["server"]
        self.max_message_size = int(server_cfg["max_message_size"])
        self.max_attachments = int(server_cfg["max_attachments"])
        self.connect_timeout = float(server_cfg["connect_timeout"])
        #: eio_sid -> _PendingBinary: a binary packet waiting for its attachments
        self._pending_binary = {}
        #: eio_sid -> _Holds: what is sent to namespaces whose on_connect runs (see
        #: _handle_connect_checked); bounded like the outbound queue
        self._held = {}
        self.max_held_messages = int(server_cfg["max_outbound_messages"])
        self.max_held_bytes = int(server_cfg["max_outbound_bytes"])
        #: eio_sid -> monotonic deadline for its first CONNECT (insertion order = deadline order)
        self._awaiting_connect = {}
        self._connect_watch = None
        #: the Engine.IO socket class of this server's connections (see _StrictEngineSocket)
        self.engine_socket_class = type("SbioEngineSocket", (_StrictEngineSocket,), {
            "sio": self, "max_post_packets": max(16, self.max_message_size // 10)})
        _install_outbound_limits(self.eio, server_cfg, self.engine_socket_class)
        # python-socketio's BaseManager.set_server (5.x) gives the client manager
        # the packet class's json, for the messages processes exchange through
        # Redis: those are ours, not a client's, and must not meet its limits;
        # what they carry (emits) is encoded as this server encodes it.
        if getattr(self.manager, "json", None) is self.packet_class.json:
            self.manager.json = self.json

    def connection_guard(self, eio_sid):
        """The :class:`~sbio.limits.ConnectionGuard` of one Engine.IO connection."""
        guard = self.guards.get(eio_sid)
        if guard is None:
            guard = self.guards[eio_sid] = ConnectionGuard(self.limits)
        return guard

    def add_namespace_class(self, cls):
        dispatcher = NamespaceDispatcher(self.sbio_server, cls)
        self.dispatchers[cls.name] = dispatcher
        if self.namespaces != "*" and cls.name not in self.namespaces:
            self.namespaces = [*self.namespaces, cls.name]
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
    # Also, once a namespace is joined, connect_timeout stops applying.
    def _handle_connect(self, eio_sid, namespace, data):
        namespace = namespace or "/"
        try:
            self._handle_connect_checked(eio_sid, namespace, data)
        finally:
            if eio_sid in self._awaiting_connect and self._joined(eio_sid, namespace):
                del self._awaiting_connect[eio_sid]

    def _handle_connect_checked(self, eio_sid, namespace, data):
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
        if namespace not in self.dispatchers:
            super()._handle_connect(eio_sid, namespace, data)
            return
        # Upstream sends CONNECT only after the connect handler returned, but the
        # sid is in its rooms from the start: what on_connect (or anyone) emits
        # to it would go out before the CONNECT, where the Socket.IO protocol
        # (and its test suite) want the CONNECT first. It is held here and sent
        # right after the CONNECT (_hold_packet); a refusal drops it.
        holds = self._held.get(eio_sid)
        if holds is None:
            holds = self._held[eio_sid] = _Holds()
        holds[namespace] = _Held()
        try:
            super()._handle_connect(eio_sid, namespace, data)
        finally:
            self._end_hold(eio_sid, namespace)  # still there: nothing answered, drop it

    def _end_hold(self, eio_sid, namespace):
        """Stop holding what is sent to *namespace* of *eio_sid*; return the _Held or None."""
        holds = self._held.get(eio_sid)
        if holds is None:
            return None
        held = holds.pop(namespace, None)
        if held is not None and holds.binary_to is held:
            holds.binary_to = None
        if not holds:
            del self._held[eio_sid]
        return held

    # Extends socketio.Server._send_packet (5.12-5.18), which upstream sends
    # every packet built for one client through (CONNECT, CONNECT_ERROR, an
    # emit with a callback, sbio's pushes): while a namespace's on_connect
    # runs, its packets are held; its CONNECT goes out, then what was held.
    def _send_packet(self, eio_sid, pkt):
        if self._held:
            holds = self._held.get(eio_sid)
            if holds is not None and self._hold_packet(eio_sid, holds, pkt):
                return
        super()._send_packet(eio_sid, pkt)

    def _hold_packet(self, eio_sid, holds, pkt):
        namespace = pkt.namespace or "/"
        held = holds.get(namespace)
        if held is None:
            return False
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            self._end_hold(eio_sid, namespace)
            super()._send_packet(eio_sid, pkt)
            send = self.eio.send_packet
            for eio_pkt in held.packets:
                send(eio_sid, eio_pkt)
            return True
        if kind in (sio_packet.CONNECT_ERROR, sio_packet.DISCONNECT):  # refused: none of it
            self._end_hold(eio_sid, namespace)
            if held.packets:
                log.debug("dropped %d packet(s) emitted to %s (namespace %s) while its refused "
                          "on_connect ran", len(held.packets), eio_sid, namespace)
            return False
        encoded = pkt.encode()
        for part in encoded if isinstance(encoded, list) else (encoded,):
            self._hold(eio_sid, held, eio_packet.Packet(eio_packet.MESSAGE, part))
        return True

    # Extends socketio.Server._send_eio_packet (5.12-5.18), which upstream's
    # Manager.emit sends every encoded emit through, once per recipient: the
    # held namespace is read from the packet text; binary attachments follow
    # their text packet (Manager.emit sends them in a row).
    def _send_eio_packet(self, eio_sid, eio_pkt):
        if self._held:
            holds = self._held.get(eio_sid)
            if holds is not None:
                data = eio_pkt.data
                if isinstance(data, str):
                    held = holds.get(_namespace_of(data))
                    holds.binary_to = held if held is not None and data[:1] in "56" else None
                else:
                    held = holds.binary_to
                if held is not None:
                    self._hold(eio_sid, held, eio_pkt)
                    return
        super()._send_eio_packet(eio_sid, eio_pkt)

    def _hold(self, eio_sid, held, eio_pkt):
        if held.full:
            return
        held.packets.append(eio_pkt)
        data = eio_pkt.data
        held.size += len(data) if data is not None else 0
        if len(held.packets) > self.max_held_messages or held.size > self.max_held_bytes:
            # Sent in a row after the CONNECT, these already overflow the
            # outbound queue, which drops the connection as a slow consumer.
            held.full = True
            log.warning("connection %s: more than server.max_outbound_messages (%d) or "
                        "server.max_outbound_bytes (%d) emitted to it while on_connect ran: "
                        "dropping the rest", eio_sid, self.max_held_messages,
                        self.max_held_bytes)

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
        access = self.sbio_server.access_log
        started = time.perf_counter() if access.events else 0.0
        try:
            envelope = dispatcher.handle_event(sid, event, data[1:])
        except Exception:  # a bug in sbio itself: still answer
            log.exception("dispatch failed (sid=%s namespace=%s event=%s)", sid, namespace, event)
            envelope = error_envelope("internal", "internal server error")
        if id is not None:
            self._send_ack(eio_sid, namespace, id, envelope, sid, event)
        elif not envelope["ok"]:
            self.push_error(eio_sid, namespace, event, envelope["error"])
        if access.events:  # [logging] access = events
            access.event(sid, namespace, event,
                         "ok" if envelope["ok"] else envelope["error"]["code"], started)

    # Not an override: upstream's ack path (socketio.Server._handle_event_internal
    # -> _send_packet) raises on an unserializable value; this one answers
    # ``internal`` instead. Uses the public packet class and Engine.IO's send().
    # The ack's arguments are the dispatcher's (NamespaceDispatcher.ack_args):
    # the envelope, or a raw handler's own values.
    def _send_ack(self, eio_sid, namespace, id, envelope, sid, event):
        dispatcher = self.dispatchers.get(namespace)
        ack_args = dispatcher.ack_args if dispatcher is not None else _envelope_args
        try:
            # Packet() runs python-socketio's recursive Packet.data_is_binary: a
            # result nested ~490 levels deep raises RecursionError already here.
            pkt = self.packet_class(sio_packet.ACK, namespace=namespace, id=id,
                                    data=ack_args(event, envelope))
            encoded = pkt.encode()
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            self.connection_guard(eio_sid).log.log(
                log, logging.ERROR, f"'result not JSON' ({_short(event)})",
                "result of handler is not JSON-serializable (sid=%s namespace=%s "
                "event=%s): %s", sid, namespace, event, exc)
            pkt = self.packet_class(
                sio_packet.ACK, namespace=namespace, id=id,
                data=ack_args(event, error_envelope("internal", "the handler returned a value "
                                                    "that cannot be sent as JSON")))
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
        self._send_packet(eio_sid, error_push_packet(namespace, event, error, self.packet_class))

    # -- the inbound packet path: strict, like socket.io's reference server ----------

    # Replaces socketio.Server._handle_eio_message (5.12-5.18) entirely.
    # Upstream keeps every attachment a binary packet announces until the
    # announced count arrives (any count up to 10 digits: one connection can
    # pin gigabytes), lets a bad placeholder wedge the connection for good
    # (the packet stays in _binary_packet), raises on packets it cannot decode
    # and passes on events without a name, packets for namespaces never
    # joined, CONNECT_ERRORs from the client. Here each packet is checked as
    # socket.io's reference server checks it (socket.io-parser's decodeString,
    # isPayloadValid and BinaryReconstructor; socket.io's Client.ondecoded):
    # a violation closes the connection, logged once; attachments are bounded
    # by server.max_attachments and, in bytes, by server.max_message_size.
    # Upstream's _handle_connect/_handle_disconnect/_handle_event/_handle_ack
    # (and sbio's overrides of them) still do the rest.
    def _handle_eio_message(self, eio_sid, data):
        try:
            pending = self._pending_binary.get(eio_sid)
            if pending is not None:
                self._take_attachment(eio_sid, pending, data)
            elif isinstance(data, str):
                self._handle_text_packet(eio_sid, data)
            else:
                raise ProtocolViolation("a binary frame that no binary packet announced")
        except ProtocolViolation as exc:
            self.close_connection(eio_sid, f"protocol violation: {exc}")
        except Exception:  # a bug in sbio or a handler it calls in line: log, keep serving
            log.exception("handling a packet of connection %s failed", eio_sid)

    def _handle_text_packet(self, eio_sid, data):
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception as exc:  # ValueError, RecursionError from the JSON decoder...
            if data[:1] == "0":
                self._refuse_malformed_connect(eio_sid, data, exc)
            raise ProtocolViolation(f"malformed packet ({exc})") from None
        kind = pkt.packet_type
        namespace = pkt.namespace or "/"
        payload = pkt.data
        if kind == sio_packet.CONNECT:
            # Any JSON value is taken as the auth, as python-socketio takes it
            # (the reference server wants an object).
            self._handle_connect(eio_sid, namespace, payload)
            return
        if kind not in _CLIENT_PACKETS:
            raise ProtocolViolation(f"a packet of type {kind!r} from a client")
        if not self._joined(eio_sid, namespace):
            raise ProtocolViolation(f"{_packet_name(kind)} for namespace {_short(namespace)}, "
                                    "which this connection has not joined")
        if kind == sio_packet.DISCONNECT:
            if payload is not None or pkt.id is not None:
                raise ProtocolViolation("a DISCONNECT packet with a payload")
            self._handle_disconnect(eio_sid, namespace, self.reason.CLIENT_DISCONNECT)
            return
        if type(payload) is _Rejected:  # well-formed, but NaN or too deep: bad_request
            self._handle_event(eio_sid, namespace, pkt.id, payload)
            return
        if type(payload) is not list:
            raise ProtocolViolation(f"the payload of {_packet_name(kind)} is not an array")
        if kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
            name = payload[0] if payload else None
            if type(name) is not str and (type(name) not in (int, float)):
                raise ProtocolViolation("an EVENT packet without an event name")
        if kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            count = pkt.attachment_count
            if count < 1:
                raise ProtocolViolation("a binary packet announcing no attachments")
            if count > self.max_attachments:
                raise ProtocolViolation(f"a binary packet announcing {count} attachments "
                                        f"(server.max_attachments is {self.max_attachments})")
            self._pending_binary[eio_sid] = _PendingBinary(pkt, len(data))
            return
        self._dispatch_packet(eio_sid, kind, namespace, pkt.id, payload)

    def _take_attachment(self, eio_sid, pending, data):
        if not isinstance(data, bytes):
            raise ProtocolViolation(f"a text packet while {pending.missing} binary "
                                    "attachment(s) are still expected")
        pending.size += len(data)
        if pending.size > self.max_message_size:
            raise ProtocolViolation(f"binary attachments over {self.max_message_size} bytes in "
                                    "total (server.max_message_size)")
        pending.attachments.append(data)
        if pending.missing:
            return
        del self._pending_binary[eio_sid]
        pkt = pending.packet
        try:
            payload = _reconstruct(pkt.data, pending.attachments)
        except RecursionError:
            raise ProtocolViolation("a binary packet nested too deeply") from None
        namespace = pkt.namespace or "/"
        if not self._joined(eio_sid, namespace):
            raise ProtocolViolation(f"a binary packet for namespace {_short(namespace)}, which "
                                    "this connection has left")
        kind = sio_packet.EVENT if pkt.packet_type == sio_packet.BINARY_EVENT else sio_packet.ACK
        self._dispatch_packet(eio_sid, kind, namespace, pkt.id, payload)

    def _dispatch_packet(self, eio_sid, kind, namespace, id, payload):
        if kind == sio_packet.EVENT:
            self._handle_event(eio_sid, namespace, id, payload)
        else:
            self._handle_ack(eio_sid, namespace, id, payload)

    _CONNECT_NAMESPACE = re.compile(r"0(/[^,]*),")

    def _refuse_malformed_connect(self, eio_sid, data, problem):
        """Answer a CONNECT that does not decode with CONNECT_ERROR (the connection then closes)."""
        match = self._CONNECT_NAMESPACE.match(data)
        namespace = match.group(1).split("?", 1)[0] if match else "/"
        self._send_packet(eio_sid, self.packet_class(
            sio_packet.CONNECT_ERROR, namespace=namespace,
            data={"message": f"malformed CONNECT packet: {problem}"}))

    def _joined(self, eio_sid, namespace):
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        return sid is not None and self.manager.is_connected(sid, namespace)

    def close_connection(self, eio_sid, why):
        """Close the Engine.IO connection *eio_sid* (logged once, with *why*).

        The client gets the Engine.IO CLOSE packet (on a websocket, then a
        close frame); its namespaces disconnect with reason "transport error".
        Not ``eio.disconnect()``: it waits without a bound for a polling
        client to fetch the CLOSE packet. Uses engineio.Server.sockets and
        ``Socket.close(wait=False, abort=False, reason=)`` (python-engineio
        4.11-4.15), as :func:`close_transports`. Packets that still arrive on
        the closed connection are dropped by :class:`_StrictEngineSocket`.
        """
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            # not a real transport: the in-process test client (its router
            # takes eio.disconnect), or a connection that is already gone
            log.info("closing connection %s: %s", eio_sid, why)
            self.eio.disconnect(eio_sid)
            return
        if sock.closed or sock.closing:
            return
        log.info("closing connection %s from %s: %s", eio_sid,
                 (self.environ.get(eio_sid) or {}).get("REMOTE_ADDR"), why)
        sock.close(wait=False, abort=False, reason=self.eio.reason.TRANSPORT_ERROR)

    # -- connect_timeout: a connection must join a namespace in time ------------------

    # Replaces socketio.Server._handle_eio_connect (5.12-5.18), which only
    # records the environ: also gives the Engine.IO socket sbio's strict class
    # and starts its connect_timeout (the reference server's connectTimeout,
    # socket.io's Client.setup).
    def _handle_eio_connect(self, eio_sid, environ):
        super()._handle_eio_connect(eio_sid, environ)
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:  # the in-process test client: no transport to time out
            return
        # engineio.Server._handle_connect builds a plain engineio.socket.Socket
        # and gives no way to choose its class. The server's _SocketTable gave
        # it one that includes engine_socket_class when it was stored (see
        # _install_outbound_limits); this is the fallback without that table.
        if type(sock) is eio_socket.Socket:
            sock.__class__ = self.engine_socket_class
            sock.__dict__ = dict(sock.__dict__)  # see _SocketTable.__setitem__
        self._awaiting_connect[eio_sid] = time.monotonic() + self.connect_timeout
        if self._connect_watch is None or self._connect_watch.dead:
            self._connect_watch = gevent.spawn(self._watch_connect_deadlines)

    def _watch_connect_deadlines(self):
        """Close connections that joined no namespace within ``server.connect_timeout``.

        One greenlet per server, alive while connections wait for their
        first CONNECT; deadlines come in insertion order (one timeout for all).
        """
        while self._awaiting_connect:
            eio_sid, deadline = next(iter(self._awaiting_connect.items()))
            wait = deadline - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
                continue
            del self._awaiting_connect[eio_sid]
            self.close_connection(
                eio_sid, f"no CONNECT within server.connect_timeout ({self.connect_timeout:g} s)")

    # Extends socketio.Server.shutdown (public): also stops the connect_timeout
    # watcher, which this server owns.
    def shutdown(self):
        if self._connect_watch is not None:
            self._connect_watch.kill(block=False)
        self._awaiting_connect.clear()
        super().shutdown()

    # Replaces socketio.Server._handle_event (5.12-5.18) for sbio namespaces.
    # Upstream spawns one greenlet per event with nothing to bound or end
    # them: sbio asks NamespaceDispatcher.admit() first (calls in flight, rate
    # limits), answers rate_limited without a greenlet, and gives the greenlet
    # to the connection's Namespace instance, whose disconnect kills it. A
    # payload StrictJSON refused (_Rejected) is answered bad_request.
    # Upstream's per-event INFO log line is left out.
    def _handle_event(self, eio_sid, namespace, id, data):
        namespace = namespace or "/"
        dispatcher = self.dispatchers.get(namespace)
        if dispatcher is None:
            return super()._handle_event(eio_sid, namespace, id, data)
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        instance = dispatcher.instances.get(sid)
        if instance is None or not self.manager.is_connected(sid, namespace):
            log.debug("event from %s, not connected to namespace %s", sid or eio_sid,
                      _short(namespace))
            return
        guard = instance._sbio_guard or self.connection_guard(eio_sid)
        if type(data) is _Rejected:
            problem = {"code": "bad_request", "message": f"bad payload: {data.reason}"}
            if self.sbio_server.access_log.events:
                self.sbio_server.access_log.event(sid, namespace, None, "bad_request",
                                                  time.perf_counter())
            guard.log.log(log, logging.WARNING, "'bad payload'",
                          "bad payload from sid=%s (namespace %s): %s", sid,
                          _short(namespace), data.reason)
            if id is not None:
                self._send_ack(eio_sid, namespace, id, {"ok": False, "error": problem},
                               sid, None)
            else:
                self.push_error(eio_sid, namespace, None, problem)
            return
        problem = dispatcher.admit(instance, data[0], guard)
        if problem is not None:
            self._refuse(eio_sid, namespace, id, sid, data[0], problem, guard)
            return
        if self.async_handlers:
            # A raw greenlet, not gevent.spawn's Greenlet: a Greenlet records
            # its spawning stack (gevent's track_greenlet_tree), about 13 % of
            # the instructions of a whole echo ack; nothing joins or links
            # these, _end_calls only kills them (gevent.killall takes raw ones).
            instance._sbio_calls.add(gevent.spawn_raw(
                self._run_event, instance, sid, eio_sid, data, namespace, id))
        else:
            self._handle_event_internal(self, sid, eio_sid, data, namespace, id)

    def _run_event(self, instance, sid, eio_sid, data, namespace, id):
        try:
            self._handle_event_internal(self, sid, eio_sid, data, namespace, id)
        finally:
            instance._sbio_calls.discard(gevent.getcurrent())

    def _refuse(self, eio_sid, namespace, id, sid, event, problem, guard):
        """Answer a call refused by the limits; close the connection on sustained abuse."""
        if self.sbio_server.access_log.events:
            self.sbio_server.access_log.event(sid, namespace, event, problem["code"],
                                              time.perf_counter())
        guard.log.log(log, logging.WARNING, "'refused call'",
                      "refused a call from sid=%s (namespace %s event %s): %s", sid,
                      _short(namespace), _short(event), problem["message"])
        for hook in self.refusal_hooks:
            hook(namespace, event, problem["code"])
        if id is not None:
            self._send_ack(eio_sid, namespace, id, {"ok": False, "error": problem}, sid, event)
        else:
            self.push_error(eio_sid, namespace, event, problem)
        if guard.strike():
            self.close_connection(eio_sid, f"sid={sid}: more than {guard.limits.close_after} "
                                  f"refused events in {ABUSE_WINDOW:g} s "
                                  "(server.rate_limit_close_after)")

    # Replaces socketio.Server._handle_ack (5.12-5.18): drops acks without an
    # id before upstream's callback lookup (a non-array payload never gets
    # here: _handle_eio_message closes the connection).
    def _handle_ack(self, eio_sid, namespace, id, data):
        # python-socketio keeps its ack-id counter under id 0: a client ack
        # with id 0 (or without an id) would corrupt it.
        if not id or type(data) is not list:
            log.warning("ignoring a malformed ack packet from %s (id %r)", eio_sid, id)
            return
        super()._handle_ack(eio_sid, namespace, id, data)

    # Replaces socketio.Server._handle_eio_disconnect (5.12-5.18; the
    # ``reason`` argument is new in 5.12): also drops sbio's connection_session
    # of that Engine.IO socket, a binary packet still waiting for attachments
    # and its connect deadline, whatever upstream raised.
    def _handle_eio_disconnect(self, eio_sid, reason):
        try:
            super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.sbio_server._connection_sessions.pop(eio_sid, None)
            self._pending_binary.pop(eio_sid, None)
            self._held.pop(eio_sid, None)
            self._awaiting_connect.pop(eio_sid, None)
            guard = self.guards.pop(eio_sid, None)
            if guard is not None:
                guard.log.flush(log, f"connection {eio_sid}")


def _envelope_args(event, envelope):
    return [envelope]


class _Held:
    """The packets sent to one namespace of a connection while its on_connect runs."""

    __slots__ = ("packets", "size", "full")

    def __init__(self):
        self.packets = []  # engineio packets, in order
        self.size = 0
        self.full = False


class _Holds(dict):
    """namespace -> _Held of one connection, and the _Held taking the binary attachments
    that follow the last text packet (None: they are sent)."""

    __slots__ = ("binary_to",)

    def __init__(self):
        super().__init__()
        self.binary_to = None


def _namespace_of(text):
    """The namespace of an encoded socket.io packet: ``2/chat,[...]`` -> ``/chat``."""
    start = 1
    if text[:1] in "56":  # binary: the attachment count and "-" come first
        dash = text.find("-", 1)
        if dash != -1:
            start = dash + 1
    if text.startswith("/", start):
        comma = text.find(",", start)
        return text[start:] if comma == -1 else text[start:comma]
    return "/"


class ProtocolViolation(Exception):
    """A packet that breaks the Engine.IO / Socket.IO protocol: the connection is closed."""


#: socket.io packet types a client may send besides CONNECT
_CLIENT_PACKETS = frozenset((sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK,
                             sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK))


def _packet_name(kind):
    name = sio_packet.packet_names[kind]
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name} packet"


class _PendingBinary:
    """A binary packet whose attachments are arriving, and the bytes taken so far."""

    __slots__ = ("packet", "attachments", "size")

    def __init__(self, packet, size):
        self.packet = packet
        self.attachments = []
        self.size = size

    @property
    def missing(self):
        return self.packet.attachment_count - len(self.attachments)


def _reconstruct(data, attachments):
    """*data* with each placeholder replaced by its attachment (socket.io-parser's rules).

    Replaces socketio.packet.Packet.reconstruct_binary, which takes any truthy
    ``_placeholder`` and any ``num`` Python can index with (``-1``, ``True``)
    and raises IndexError/TypeError on the others.
    """
    if isinstance(data, list):
        return [_reconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if type(num) is int and 0 <= num < len(attachments):
                return attachments[num]
            raise ProtocolViolation(f"a placeholder for attachment {_short(num)} of "
                                    f"{len(attachments)}")
        return {key: _reconstruct(value, attachments) for key, value in data.items()}
    return data


class _StrictEngineSocket(eio_socket.Socket):
    """python-engineio's Socket, strict on what a client sends (per-server subclass).

    ``sio`` (the :class:`SocketIOServer`) and ``max_post_packets`` are class
    attributes of the subclass each server makes.
    """

    sio: Any = None
    max_post_packets = 16
    _ping_task: Any = None  # the greenlet sleeping until the next PING (see schedule_ping)
    last_ping: Any  # (set by engineio's BaseSocket)

    # Replaces engineio.socket.Socket.schedule_ping (python-engineio 4.11-4.15):
    # the same greenlet (it sleeps ping_interval, then sends a PING), kept so
    # that close() can end it. Upstream's outlives its socket by up to
    # ping_interval: after a churn of connections, one sleeping greenlet
    # (and the closed socket it holds) per connection closed in the last 25 s.
    def schedule_ping(self):
        if self.last_ping:
            self.last_ping = None
            self._ping_task = self.server.start_background_task(self._send_ping)

    # Extends engineio.socket.Socket.close (4.11-4.15): the ping greenlet of
    # a socket this call closes is killed (not the caller itself: a PING
    # send that finds the ping timed out closes from that greenlet).
    def close(self, wait=True, abort=False, reason=None):
        closing = not (self.closed or self.closing)
        try:
            super().close(wait=wait, abort=abort, reason=reason)
        finally:
            task = self._ping_task
            if closing and task is not None:
                self._ping_task = None
                if task is not gevent.getcurrent():
                    task.kill(block=False)

    def receive(self, pkt):
        # Replaces engineio.socket.Socket.receive (python-engineio 4.11-4.15)
        # for three cases: after the server closed the connection, what is
        # still in flight is dropped here (python-engineio would hand it on, and every packet
        # would be another violation to log); a PING from an Engine.IO v4
        # client is "invalid heartbeat direction" to the reference server,
        # which closes, where python-engineio ignores it on a websocket; OPEN
        # and NOOP are ignored (the reference server ignores them too;
        # python-engineio raises, which over polling ends in a hanging close).
        if self.closed or self.closing:
            return
        kind = pkt.packet_type
        if kind == eio_packet.PING:
            self.sio.close_connection(self.sid, "protocol violation: a PING from the client "
                                      "(invalid heartbeat direction)")
            return
        if kind in (eio_packet.OPEN, eio_packet.NOOP):
            return
        super().receive(pkt)

    def handle_post_request(self, environ):
        # Replaces engineio.socket.Socket.handle_post_request (python-engineio
        # 4.11-4.15), which decodes the body with engineio.payload.Payload: a
        # process-wide limit of 16
        # packets per POST (more and the whole body is dropped, yet the POST
        # is answered 200), and a packet that does not decode drops the body
        # the same way. Here a POST is taken whole, up to max_post_packets
        # (server.max_message_size / 10: no real packet is shorter than 10
        # bytes on average), or refused: the connection is closed and
        # python-engineio answers 400, so the client reconnects.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > self.server.max_http_buffer_size:
            self._refuse(f"a {length}-byte POST (server.max_message_size is "
                         f"{self.server.max_http_buffer_size})")
        try:
            body = environ["wsgi.input"].read(length).decode("utf-8")
        except UnicodeDecodeError:
            self._refuse("a POST body that is not UTF-8")
        if body.startswith("d="):  # JSONP, as engineio.payload.Payload.decode
            body = urllib.parse.parse_qs(body).get("d", [""])[0]
        count = body.count("\x1e") + 1
        if count > self.max_post_packets:
            self._refuse(f"a POST of {count} packets (at most {self.max_post_packets})")
        pieces = body.split("\x1e")
        for piece in pieces:
            if not piece or piece[0] not in "0123456b":
                self._refuse(f"a POST carrying something that is not an Engine.IO packet: "
                             f"{piece[:20]!r}")
        for piece in pieces:
            try:
                pkt = eio_packet.Packet(encoded_packet=piece)
            except Exception as exc:  # a bad base64 attachment
                self._refuse(f"a packet that does not decode ({exc})")
            self.receive(pkt)
            if self.closed:
                # the client's own CLOSE is taken; a violation closed it: 400
                if pkt.packet_type != eio_packet.CLOSE:
                    raise _PostRefused()
                break

    def _refuse(self, why):
        self.sio.close_connection(self.sid, f"protocol violation: {why}")
        raise _PostRefused()


class _PostRefused(eio_exceptions.EngineIOError):
    """python-engineio answers 400 to a POST that raises an EngineIOError."""


class _Rejected:
    """The data of an EVENT packet whose payload :class:`~sbio.limits.StrictJSON` refused."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


def _packet_class(max_depth, encoder):
    """python-socketio's Packet with :class:`~sbio.limits.StrictJSON` as its json.

    *encoder*: the server's :class:`~sbio.jsonenc.JSONProvider`, which
    encodes every packet of this server (``Packet.encode`` calls
    ``json.dumps``); a class per server, so two servers never share it.

    Wraps socketio.packet.Packet.decode (5.x), which parses the id before the
    JSON payload: an EVENT whose payload StrictJSON refuses (NaN, too deep)
    keeps its id and gets a :class:`_Rejected` as data, so ``_handle_event``
    answers it with ``bad_request``; any other packet type raises as before.
    ``encode`` is upstream's; ``json.dumps`` there refuses NaN/Infinity.
    """

    class SbioPacket(sio_packet.Packet):
        json = StrictJSON(max_depth, encoder)

        def decode(self, encoded_packet):
            try:
                return super().decode(encoded_packet)
            except BadJSON as exc:
                if self.packet_type != sio_packet.EVENT:
                    raise
                self.data = _Rejected(str(exc))
                return 0

    return SbioPacket


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
    # slots of WebSocket, which mypy does not see (gevent-websocket is untyped)
    stream: Any
    raw_write: Any
    raw_read: Any

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
    # It also arms _SbioWebSocketHandler.close_tcp_later: gevent-websocket
    # leaves the TCP connection to whoever reads it, and when the close comes
    # from Engine.IO's writer (ping timeout, server disconnect) the reader
    # would wait for a client that may never answer.
    def close(self, code=1000, message=b""):
        if self.closed:
            return
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        self.close_with(code, message or "")
        self.handler.close_tcp_later()

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
        # Timeout(s, False) expires silently, as gevent documents (its stubs want an exception)
        with gevent.Timeout(seconds, False):  # type: ignore[arg-type]
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
            # (closed: a slot of WebSocket, which mypy cannot see)
            self.closed = True  # type: ignore[misc]
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
    #: seconds for a request's line and headers, and for the close handshake
    #: (``server.http_timeout``); None: no limit
    http_timeout = None
    #: a _Throttled log of connections timed out (one per server)
    timeout_log = None
    sbio_message_bytes = 0
    websocket: Any  # set by upgrade_connection (gevent-websocket), None once it ended
    _head_timer = None
    _close_timer = None
    _requests_done = 0

    def handle(self):
        # Once per accepted connection. Without TCP_NODELAY, Nagle's algorithm
        # holds a small write while an earlier one is unacknowledged, and the
        # client delays its ACK (up to 40 ms): a connection that gets several
        # messages in a row (broadcasts, an update after an ack) stalls.
        if self.tcp_nodelay:
            with contextlib.suppress(OSError):  # the peer is already gone; nothing to tune
                self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.http_timeout:
            self._head_timer = gevent.Timeout(self.http_timeout)
        try:
            return super().handle()
        finally:
            if self._close_timer is not None:
                self._close_timer.stop()
                self._close_timer = None

    # -- the request head must arrive within http_timeout ---------------------
    # gevent.pywsgi.WSGIHandler (gevent 20-26) reads the request line and the
    # headers with no time limit: a client sending them slowly (or not at all)
    # holds its connection and greenlet for ever. These three extend
    # read_requestline / read_request / handle_one_request so that one timer
    # per connection runs from the start of each request line to the end of
    # its headers (an idle keep-alive connection is closed after it, as Node's
    # headersTimeout / keepAliveTimeout do).

    def read_requestline(self):
        timer = self._head_timer
        if timer is not None:
            timer.cancel()
            timer.start()
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            if self._head_timer is not None:
                self._head_timer.cancel()

    def handle_one_request(self):
        timer = self._head_timer
        try:
            result = super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return self._head_timed_out()
        finally:
            if timer is not None:
                timer.cancel()
        self._requests_done += 1
        return result

    def _head_timed_out(self):
        """Answer 408 (not to an idle keep-alive connection); None: close the connection."""
        if self._requests_done:
            return
        note = self.timeout_log or log.log
        note(logging.INFO, "closing connection from %s: no complete request head within %s s "
             "(server.http_timeout)", _peer(self.client_address), self.http_timeout)
        with contextlib.suppress(OSError):
            self.socket.sendall(_REQUEST_TIMEOUT)

    def close_tcp_later(self):
        """Shut the TCP connection down in ``http_timeout`` s unless the handler ends first.

        Run when the websocket is closed from outside its reader (Engine.IO's
        writer after a ping timeout or a server-side disconnect): the close
        frame is out, and a client that answers it ends the connection at
        once; one that does not (dead, or hostile) is cut off here. A libev
        timer, not a greenlet: nothing to own, stopped in :meth:`handle`.
        """
        sock = getattr(self, "socket", None)
        if sock is None or self._close_timer is not None or not self.http_timeout:
            return
        timer = self._close_timer = gevent.get_hub().loop.timer(self.http_timeout)
        timer.start(_shutdown_quietly, sock)

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

    # Replaces geventwebsocket.handler.WebSocketHandler.run_websocket (0.10.1)
    # for two things:
    # * the handler builds a plain WebSocket in upgrade_connection with no
    #   class hook, so its class is swapped (``__class__``) for the per-server
    #   subclass carrying the size limit before the first read;
    # * upstream registers the websocket in ``server.clients`` under the
    #   client's (host, port) and ends with ``del server.clients[address]``.
    #   When a client's port is reused while the server still runs the old
    #   connection's handler (the old client reset its TCP connection; its
    #   on_disconnect is still running), the new connection overwrites the old
    #   entry, the old handler deletes the new one, and the new handler's del
    #   raises KeyError into gevent (seen in the soak: one per ~3,500
    #   connections). Here each handler removes its own entry only.
    def run_websocket(self):
        if self.websocket_class is not None and type(self.websocket) is WebSocket:
            self.websocket.__class__ = self.websocket_class
        if getattr(self, "prevent_wsgi_call", False):
            return
        clients = getattr(self.server, "clients", None)
        if clients is None:
            clients = self.server.clients = {}
        address = self.client_address
        client = Client(address, self.websocket)
        clients[address] = client
        try:
            list(self.application(self.environ, lambda s, h, e=None: []))
        finally:
            if clients.get(address) is client:
                del clients[address]
            websocket = self.websocket
            if websocket is not None and not websocket.closed:
                websocket.close()
            self.environ.update({"wsgi.websocket": None})
            self.websocket = None


def websocket_handler_class(max_message_size, engineio_server, tcp_nodelay, http_timeout=10.0):
    """A per-server gevent-websocket handler class for ``gevent.pywsgi.WSGIServer``.

    :param max_message_size: bytes; a bigger websocket message closes with 1009.
    :param engineio_server: the ``engineio.Server`` whose origin policy applies.
    :param tcp_nodelay: set TCP_NODELAY on each accepted socket.
    :param http_timeout: seconds for a request's line and headers (else 408 and
        close) and for a client to answer a close frame (else the TCP
        connection is shut); None or 0: no limit.
    """
    websocket_class = type("SbioWebSocket", (_LimitedWebSocket,),
                           {"__slots__": (), "max_message_size": max_message_size})
    return type("SbioWebSocketHandler", (_SbioWebSocketHandler,),
                {"websocket_class": websocket_class, "engineio_server": engineio_server,
                 "tcp_nodelay": bool(tcp_nodelay), "http_timeout": http_timeout or None,
                 "timeout_log": _Throttled(log)})


def close_transports(sio, timeout):
    """Close every Engine.IO connection of *sio*; give queued packets *timeout* s to go out.

    What every client library reconnects after: the transport ends, with no
    goodbye packet. Not ``sio.disconnect()``: its socket.io DISCONNECT (reason
    "io server disconnect") tells socket.io-client and sbio.js never to
    reconnect. Not the Engine.IO CLOSE packet either (``Socket.close`` without
    ``abort``): python-socketio's client takes it as "server disconnect" and
    does not reconnect (python-engineio's ``Client._receive_packet`` calls
    ``disconnect()``, so socketio.Client._handle_eio_disconnect finds the
    state "disconnecting"). Not Engine.IO's ``disconnect()``: it waits without
    a bound for a long-polling client. So each socket is closed with
    ``abort=True``: what is queued still goes out, then a websocket gets its
    close frame; a waiting long-poll GET is answered with a NOOP and the next
    one with 400 (the session is gone). Every client sees a transport
    close / error and reconnects; ``on_disconnect`` runs with reason
    "server disconnect".

    Touches engineio.Server.sockets (the sid -> engineio.socket.Socket dict)
    and each socket's ``queue`` and ``upgraded`` (python-engineio 4.11-4.15):
    there is no public "close all without waiting" call.
    ``Socket.close(wait=False, abort=True, reason=)`` is the signature of
    engineio 4.11+.
    """
    eio = sio.eio
    sockets = list(eio.sockets.values())
    eio.sockets.clear()  # not a new dict: it is the _SocketTable of the outbound limits
    for sock in sockets:
        try:
            if not sock.upgraded and not sock.closed:
                # a long-poll GET waiting now returns a well-formed payload ("6"),
                # not an empty body (socket.io-client decodes that as a parser error)
                sock.queue.put(eio_packet.Packet(eio_packet.NOOP))
            sock.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)
        except Exception:
            log.exception("closing connection %s at shutdown failed", sock.sid)
    # Not queue.join(): a long-poll GET that took the None puts it back
    # (Socket.poll), so the queue never counts as done; the packets are out
    # once only that None is left.
    # Timeout(s, False) expires silently, as gevent documents (its stubs want an exception)
    with gevent.Timeout(timeout, False):  # type: ignore[arg-type]
        while not all(_only_none_left(sock) for sock in sockets):
            gevent.sleep(0.02)
    socket_class = getattr(eio.sockets, "socket_class", None)
    if socket_class is not None:  # slow consumers still being closed
        socket_class.closers.kill(timeout=max(0.1, timeout))


def _only_none_left(sock):
    """Whether the Engine.IO socket's transport took every packet queued before its close."""
    return all(pkt is None for pkt in sock.queue.queue)


# -- sending already-encoded packets ----------------------------------------------------------


def send_text(sio, eio_sid, text):
    """Send socket.io packet *text* to Engine.IO connection *eio_sid* (see :func:`text_sender`)."""
    sio.eio.send_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, text))


def text_sender(sio):
    """A ``send(eio_sid, text)`` sending socket.io packet *text* as one Engine.IO MESSAGE.

    Bound once per fan-out: the hot loop of the live-data broadcaster calls
    it for every subscriber. Uses engineio.Server.send_packet (public) with
    an ``engineio.packet.Packet``; python-socketio's own path
    (socketio.Server._send_eio_packet) is one call deeper.
    """
    send_packet = sio.eio.send_packet
    packet, message = eio_packet.Packet, eio_packet.MESSAGE

    def send(eio_sid, text):
        send_packet(eio_sid, packet(message, text))

    return send


# -- driving the packet handling without a socket (the in-process test client) -----------------


def feed_connect(sio, eio_sid, environ):
    """Open Engine.IO connection *eio_sid* as if a client had connected with *environ*.

    Calls socketio.Server._handle_eio_connect (5.12-5.18), the handler
    Engine.IO's "connect" event runs: there is no public way to open a
    connection without a transport.
    """
    sio._handle_eio_connect(eio_sid, environ)


def feed_message(sio, eio_sid, text):
    """Hand socket.io packet *text* (or a binary attachment) to *sio* as received from *eio_sid*.

    Calls socketio.Server._handle_eio_message (5.12-5.18; overridden by
    :class:`SocketIOServer`), the handler of Engine.IO's "message" event.
    """
    sio._handle_eio_message(eio_sid, text)


def feed_disconnect(sio, eio_sid, reason="client disconnect"):
    """Close Engine.IO connection *eio_sid* as if the client had gone.

    Calls socketio.Server._handle_eio_disconnect (its *reason* argument
    exists from python-socketio 5.12).
    """
    sio._handle_eio_disconnect(eio_sid, reason)


def capture_output(sio, send_packet, disconnect):
    """Route what *sio* sends to callables instead of transports (an unstarted test server).

    ``send_packet(eio_sid, engineio_packet)`` receives every packet (``send``
    wraps its data in a MESSAGE packet, as Engine.IO's does) and
    ``disconnect(eio_sid=None, reason=None)`` every disconnect. Replaces, on
    this one ``engineio.Server`` instance, its public methods send_packet,
    send and disconnect (python-engineio 4.11-4.15); python-socketio calls
    them for all its output, so nothing of it reaches a socket.
    """
    eio = sio.eio
    eio.send_packet = send_packet
    eio.send = lambda eio_sid, data: send_packet(
        eio_sid, eio_packet.Packet(eio_packet.MESSAGE, data=data))
    eio.disconnect = disconnect


# -- the Python client (sbio.Client) ------------------------------------------------------------
#
# sbio.Client drives python-socketio's threaded client (socketio.Client over
# engineio.Client). Three things of it are changed, all here:
# * order: engineio.Client hands every received message to a new thread, so
#   two packets can be handled out of order (an older update after a newer
#   one), and triggers "disconnect" in its read loop, possibly before
#   messages that arrived earlier were handled. ClientSocket's Engine.IO
#   client hands both to one thread, in arrival order;
# * events: socketio.Client calls the handler of a server event in that
#   thread and acks with its return value; ClientSocket hands each event
#   (and a reply function, for a server's call) to sbio.Client, which runs
#   application code on a thread of its own, so a slow callback never holds
#   up the acks it may be waiting for;
# * a namespace DISCONNECT (the server's Namespace.disconnect(): on purpose,
#   no reconnect) and an Engine.IO close both reach the client's disconnect
#   handler as "server disconnect": ClientSocket.kicked tells them apart.
# Written against python-socketio 5.12-5.18 (socketio/client.py) and
# python-engineio 4.11-4.15 (engineio/client.py).


class _OrderedEngineClient(engineio.Client):
    """``engineio.Client`` whose messages and disconnect are handled on one thread, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._inbox_lock = threading.Lock()
        self._dispatcher = None
        self._dispatch_stopped = False

    # Replaces engineio.Client._trigger_event (4.11-4.15) for "message" (upstream:
    # a thread per message, run_async=True) and "disconnect" (upstream: run in
    # the read loop, run_async=False): both go to the inbox, which one thread
    # drains. "connect" stays upstream's (run in connect(), before the read loop).
    def _trigger_event(self, event, *args, **kwargs):
        if event not in ("message", "disconnect") or event not in self.handlers:
            return super()._trigger_event(event, *args, **kwargs)
        with self._inbox_lock:
            if self._dispatch_stopped:
                return None
            self._inbox.put((event, self.handlers[event], args))
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name="sbio.Client packets")
                self._dispatcher.start()
        return None

    def _dispatch(self):
        while True:
            item = self._inbox.get()
            if item is None:
                return
            event, handler, args = item
            try:
                handler(*args)
            except Exception:  # a bug: log it, keep handling packets
                self.logger.exception("handling Engine.IO %s failed", event)

    def flush(self, timeout):
        """Wait up to *timeout* s until what is queued now has been handled (False: not yet)."""
        with self._inbox_lock:
            if self._dispatcher is None:
                return True
            done = threading.Event()
            self._inbox.put(("flush", done.set, ()))
        return done.wait(timeout)

    def stop_dispatch(self, timeout):
        """Stop the packet thread after what is queued; join it for up to *timeout* s."""
        with self._inbox_lock:
            self._dispatch_stopped = True
            thread, self._dispatcher = self._dispatcher, None
            self._inbox.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class ClientSocket(socketio.Client):
    """``socketio.Client`` for :class:`sbio.Client` (see the section comment above).

    :param on_event: ``on_event(event, args, reply)`` for each event the
        server sends, on the packet thread (it must not block); *reply* is
        ``reply(*values)`` for an event the server sent with an ack id (its
        ``Namespace.call``), else None.
    Other keyword arguments are ``socketio.Client``'s.
    """

    def __init__(self, on_event, **kwargs):
        self.on_event = on_event
        #: the server ended the namespace on purpose (a socket.io DISCONNECT); reset on connect
        self.kicked = False
        #: the payload of the CONNECT_ERROR that refused the namespace ({"message", "data"})
        self.refusal = None
        self._send_lock = threading.Lock()
        super().__init__(**kwargs)

    # Replaces socketio.Client._engineio_client_class (5.12-5.18): the ordered Engine.IO client.
    def _engineio_client_class(self):
        return _OrderedEngineClient

    # Replaces socketio.Client._handle_event (5.12-5.18), which runs the
    # event's handler on the packet thread and acks with its return value:
    # the event goes to on_event with a reply function instead.
    def _handle_event(self, namespace, id, data):
        namespace = namespace or "/"
        if not data:
            return
        reply = None
        if id is not None:
            def reply(*values):
                self._send_packet(self.packet_class(sio_packet.ACK, namespace=namespace,
                                                    id=id, data=list(values)))
        self.on_event(data[0], list(data[1:]), reply)

    # Extends socketio.Client._handle_disconnect (5.12-5.18), the server's
    # socket.io DISCONNECT: remembered, as it means "do not reconnect".
    def _handle_disconnect(self, namespace):
        if self.connected:
            self.kicked = True
        super()._handle_disconnect(namespace)

    # Extends socketio.Client._handle_error (5.12-5.18), the CONNECT_ERROR of
    # a refused namespace: its payload is kept, to tell a refusal (with the
    # server's message) from a transport failure, which upstream reports
    # through the same connect_error event.
    def _handle_error(self, namespace, data):
        self.refusal = data if data is not None else {"message": "Connection refused"}
        super()._handle_error(namespace, data)

    # Extends socketio.Client._send_packet (5.12-5.18): upstream is not
    # thread-safe for a packet with binary attachments (several Engine.IO
    # messages); sbio.Client sends from several threads.
    def _send_packet(self, pkt):
        with self._send_lock:
            super()._send_packet(pkt)

    def abort(self):
        """Drop the Engine.IO connection at once (after a failed connect: a polling
        transport would wait out its long-poll). ``engineio.Client.disconnect(abort=True)``."""
        self.eio.disconnect(abort=True)

    def flush(self, timeout):
        """Wait up to *timeout* s until the packets received so far have been handled."""
        return self.eio.flush(timeout)

    def stop_dispatch(self, timeout):
        """Stop the packet thread (see :class:`_OrderedEngineClient`), for good."""
        self.eio.stop_dispatch(timeout)


# -- the Redis client manager ----------------------------------------------------------------


class RedisManagerBase(socketio.RedisManager):
    """``socketio.RedisManager`` whose transport is two public-named methods.

    python-socketio's PubSubManager does the socket.io part (encoding emits,
    rooms, disconnects for other processes, applying theirs); the Redis
    connection handling is the subclass's (:class:`sbio.cluster.RedisManager`),
    which implements :meth:`publish_message` and :meth:`listen_messages`.
    """

    def publish_message(self, data):
        """Send *data* (a dict built by python-socketio) to the other processes."""
        raise NotImplementedError

    def listen_messages(self):
        """Yield the messages the other processes published (raw Redis payloads)."""
        raise NotImplementedError

    def spawn_dispatch(self):
        """Start the greenlet applying :meth:`listen_messages` to this process.

        Runs socketio.PubSubManager._thread (5.12-5.18), the loop that
        decodes each message and applies it; upstream starts it in
        ``initialize()`` through the server, which sbio's manager replaces
        to start and stop it itself.
        """
        return gevent.spawn(self._thread)

    # Replaces socketio.RedisManager._publish (5.12-5.18), which reconnects
    # (and logs) on every emit while Redis is down.
    def _publish(self, data):
        return self.publish_message(data)

    # Replaces socketio.RedisManager._listen (5.12-5.18): upstream owns a
    # pub/sub connection that cannot be stopped; sbio's subscriber can.
    def _listen(self):
        return self.listen_messages()


# -- outbound queues: slow consumers are dropped ----------------------------------------
#
# python-engineio (4.11-4.15) gives each connection an unbounded gevent queue
# (engineio.base_socket.BaseSocket.queue) that engineio.socket.Socket.send
# fills and the transport drains: the websocket writer task in
# Socket._websocket_handler, or a polling GET through Socket.poll. A client
# that never reads (its writer blocks in sendall) or never GETs grows it for
# ever. There is no hook: the engine.io server builds its sockets itself in
# engineio.Server._handle_connect (``socket.Socket(self, sid)``) and stores
# them with ``self.sockets[sid] = s``. So engineio.Server.sockets becomes a
# _SocketTable, whose __setitem__ gives each new socket the per-server
# subclass of _OutboundSocket and _StrictEngineSocket (a ``__class__`` swap,
# before the socket sends or reads anything: the same layout, plain Python
# classes).

_CLOSE = eio_packet.CLOSE
_INFO = logging.INFO


class _OutboundSocket(eio_socket.Socket):
    """An Engine.IO socket whose outbound queue is bounded in messages and bytes.

    Past either bound the connection is dropped as a slow consumer: its
    backlog is freed at once and later packets are discarded; then, in a
    greenlet of its own (so ``on_disconnect`` runs as for any disconnect,
    not inside the emit that crossed the bound), the Engine.IO socket is
    closed and a websocket's TCP connection reset (which unblocks its
    writer). A polling session gets a CLOSE packet for its next GET.
    """

    #: per-server values, set by _install_outbound_limits
    max_outbound_messages = 10000
    max_outbound_bytes = 16_000_000
    http_timeout = 10.0
    closers: Any = None

    _queued_bytes = 0  # bytes put since the queue was last empty (see send)
    _dropped = False
    _transport = None  # the websocket's pywsgi handler, while the websocket runs
    _upgrade_timer = None
    _upgrading = False

    # Replaces engineio.socket.Socket.send (4.11-4.15), the hottest line of
    # fan-out (once per packet per recipient): the same steps (ping-timeout
    # check, queue.put, the INFO line) plus the two bounds, without an extra
    # call, and without formatting the INFO line's arguments when INFO is off.
    #
    # The byte count is of the packets put since the queue was last empty:
    # both drains (the websocket writer's and a GET's Socket.poll) empty it
    # in one go, so this is the queue's content, or more, never less. Packet
    # data is the encoded socket.io packet (ASCII JSON str, or the bytes of
    # an attachment). A packet into an empty queue is always taken, however
    # big: the bounds are on a backlog, not on one message.
    def send(self, pkt):
        if not self.check_ping_timeout():
            return
        data = pkt.data
        try:
            size = len(data)
        except TypeError:  # None (PING, NOOP, CLOSE)
            size = 0
        queue = self.queue
        backlog = queue.queue
        if backlog:
            size += self._queued_bytes
            if (len(backlog) >= self.max_outbound_messages or size > self.max_outbound_bytes) \
                    and pkt.packet_type != _CLOSE:
                self._drop_slow_consumer(len(backlog), size)
                return
        elif self._dropped and pkt.packet_type != _CLOSE:
            return
        self._queued_bytes = size
        queue.put(pkt)
        logger = self.server.logger
        if logger.isEnabledFor(_INFO):
            logger.info('%s: Sending packet %s data %s', self.sid,
                        eio_packet.packet_names[pkt.packet_type],
                        data if not isinstance(data, bytes) else '<binary>')

    def _drop_slow_consumer(self, count, size):
        if self._dropped:
            return
        self._dropped = True
        queue = self.queue
        while True:  # free the backlog now, not when the writer gets to it
            try:
                queue.get_nowait()
            except gevent.queue.Empty:
                break
            queue.task_done()
        self._queued_bytes = 0
        transport = self._transport
        log.warning("dropping slow consumer %s (%s): %d messages, %d bytes queued "
                    "(server.max_outbound_messages %d, server.max_outbound_bytes %d)",
                    self.sid, "websocket" if transport is not None else "polling",
                    count, size, self.max_outbound_messages, self.max_outbound_bytes)
        self.closers.spawn(self._close_dropped, transport)

    def _close_dropped(self, transport):
        # Closed first, then the TCP reset: on_disconnect gets TRANSPORT_ERROR
        # (not the "transport close" the reset would make the reader report).
        # A polling client finds a CLOSE packet at its next GET.
        try:
            self.close(wait=False, abort=transport is not None,
                       reason=self.server.reason.TRANSPORT_ERROR)
        finally:
            if transport is not None:
                _abort_tcp(getattr(transport, "socket", None))

    # Extends engineio.socket.Socket._websocket_handler (4.11-4.15), which runs
    # the websocket (for an upgrade from polling: the "2probe" / "3probe" /
    # "5" handshake first, with no time limit):
    # * remembers the transport, so a slow consumer's TCP connection can be reset;
    # * bounds the upgrade handshake by http_timeout. The timer is cancelled
    #   when Engine.IO clears ``upgrading`` (every exit of the handshake: see
    #   the property below); if it fires, the upgrade failed, as upstream's
    #   own failure paths do (``upgrading = False``, return []), and the
    #   session goes on over polling.
    def _websocket_handler(self, ws):
        websocket = ws.environ.get("wsgi.websocket")
        self._transport = getattr(websocket, "handler", None)
        timer = None
        if self.connected and self.http_timeout:  # an upgrade: the handshake comes first
            timer = self._upgrade_timer = gevent.Timeout(self.http_timeout)
            timer.start()
        try:
            return super()._websocket_handler(ws)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            log.info("websocket upgrade of %s not completed within %s s "
                     "(server.http_timeout): closing the websocket", self.sid, self.http_timeout)
            self.upgrading = False
            if websocket is not None:
                websocket.close(1008, "Engine.IO upgrade not completed in time")
            return []
        finally:
            if timer is not None:
                timer.cancel()
            self._upgrade_timer = None
            self._transport = None

    @property
    def upgrading(self):
        return self._upgrading

    @upgrading.setter
    def upgrading(self, value):
        self._upgrading = value
        if not value and self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
            self._upgrade_timer = None


class _SocketTable(dict):
    """engineio.Server.sockets, giving each new socket the outbound limits (see above)."""

    __slots__ = ("socket_class",)
    socket_class: type

    def __setitem__(self, sid, sock):
        if type(sock) is eio_socket.Socket:
            upgrading = sock.__dict__.pop("upgrading", False)
            sock.__class__ = self.socket_class
            # A fresh dict: the old one shares its keys with engineio's Socket
            # class, and CPython's attribute caches then miss on every access
            # of the swapped object (measured: send() twice as slow).
            sock.__dict__ = dict(sock.__dict__)
            sock.upgrading = upgrading
        dict.__setitem__(self, sid, sock)


def _install_outbound_limits(eio, server_config, base=eio_socket.Socket):
    """Bound the outbound queue of every socket *eio* makes from now on.

    *base*: the socket class the connections would have otherwise (the
    server's :class:`_StrictEngineSocket` subclass); the class given to
    them is both.
    """
    socket_class = type("SbioEngineIOSocket", (_OutboundSocket, base), {
        "max_outbound_messages": int(server_config["max_outbound_messages"]),
        "max_outbound_bytes": int(server_config["max_outbound_bytes"]),
        "http_timeout": float(server_config["http_timeout"]) or None,
        # owns the greenlets closing dropped connections (killed by close_transports)
        "closers": gevent.pool.Group(),
    })
    table = _SocketTable(eio.sockets)
    table.socket_class = socket_class
    eio.sockets = table


def _abort_tcp(sock):
    """Reset a TCP connection now: unblocks a writer stuck in sendall, frees the kernel buffers."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already gone
        pass


def _peer(address):
    """The client's host of a pywsgi ``client_address`` (a tuple, or a string for UNIX sockets)."""
    if isinstance(address, tuple) and address:
        return address[0]
    return address or "?"


def _shutdown_quietly(sock):
    with contextlib.suppress(OSError):  # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


# -- HTTP: request-head timeout (see _SbioWebSocketHandler), connection cap -------------

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"X-Content-Type-Options: nosniff\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nrequest timeout\n")
_UNAVAILABLE_BODY = b"too many connections, try again later\n"
_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
                b"X-Content-Type-Options: nosniff\r\n"
                b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(_UNAVAILABLE_BODY), _UNAVAILABLE_BODY))


class _Throttled:
    """A log call that logs the first event at once, then at most one per *period* s.

    The line after a quiet spell says how many were not logged. For events
    a client can cause at will (connections timed out or refused), so that
    a flood of them is not a flood of log lines.
    """

    def __init__(self, logger, period=60.0):
        self._logger = logger
        self._period = period
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, level, msg, *args):
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (and %d more in the last %d s)"
            args += (self._suppressed, self._period)
            self._suppressed = 0
        self._next = now + self._period
        self._logger.log(level, msg, *args)


class ConnectionLimitedWSGIServer(WSGIServer):
    """``gevent.pywsgi.WSGIServer`` answering 503 past *max_connections* concurrent connections.

    gevent's own cap (``spawn=Pool(n)``) stops accepting when the pool is
    full: new clients wait in the listen backlog, then time out, with no
    answer. This counts the connections being handled (websockets, polling
    and page requests alike, keep-alive included) and answers one more with
    ``503 Service Unavailable`` + ``Connection: close``, then closes it.

    :param max_connections: the cap; 0: none (see :func:`connection_cap` for
        ``server.max_connections``).
    :param linger: seconds to read what a refused client still sends before
        closing (so the kernel does not reset the connection and lose the
        503), at most 64 kB.
    """

    def __init__(self, *args, max_connections=0, linger=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_connections = int(max_connections or 0)
        #: connections being handled now
        self.connections = 0
        self._linger = linger
        self._refusals = _Throttled(log)

    # Extends gevent.pywsgi.WSGIServer.handle (public; gevent 20-26), run in
    # the connection's own greenlet.
    def handle(self, sock, address):
        if self.max_connections and self.connections >= self.max_connections:
            return self._refuse(sock, address)
        self.connections += 1
        try:
            return super().handle(sock, address)
        finally:
            self.connections -= 1

    def _refuse(self, sock, address):
        self._refusals(logging.WARNING, "refusing a connection from %s with 503: %d "
                       "connections open (server.max_connections)",
                       _peer(address), self.connections)
        try:
            sock.sendall(_UNAVAILABLE)
            sock.shutdown(socket.SHUT_WR)
            drained = 0
            # Timeout(s, False) expires silently, as gevent documents (its stubs want an exception)
            with gevent.Timeout(self._linger, False):  # type: ignore[arg-type]
                while drained < 65536:
                    chunk = sock.recv(16384)
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass


#: file descriptors kept for what is not a client connection (listening
#: socket, database and Redis connections, files) when the cap is derived
_RESERVED_FILES = 100


def _open_files_limit():
    """This process's soft open-file limit (``ulimit -n``), or None if unlimited or unknown."""
    try:
        import resource
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections):
    """The connection cap for ``server.max_connections``: 0 derives it from ``ulimit -n``.

    Past the open-file limit accept() fails and the client gets no answer,
    so the derived cap (the limit minus 100) makes the server answer 503
    first. An explicit value above it is kept, with a warning.
    """
    limit = _open_files_limit()
    if not max_connections:
        return max(1, limit - _RESERVED_FILES) if limit else 0
    if limit and max_connections > limit - _RESERVED_FILES:
        log.warning("server.max_connections is %d but this process may open only %d files: "
                    "connections past that fail at accept(), without a 503; raise the limit "
                    "(ulimit -n) or lower server.max_connections", max_connections, limit)
    return max_connections


# -- operations: outbound backlogs, the socket.io Admin UI ------------------------------------


def outbound_backlogs(sio):
    """``(messages, bytes)`` queued for each Engine.IO connection of *sio* that has a backlog.

    Read at scrape time by :mod:`sbio.ops.metrics`. Touches engineio.Server.sockets
    and each socket's ``queue`` (python-engineio 4.11-4.15), and the byte count
    :class:`_OutboundSocket` keeps (the bytes put since its queue was last
    empty: the queue's content, or more, never less).
    """
    found = []
    for sock in list(sio.eio.sockets.values()):
        queue = getattr(sock, "queue", None)
        messages = queue.qsize() if queue is not None else 0
        if messages:
            found.append((messages, getattr(sock, "_queued_bytes", 0)))
    return found


def _mangled(name):
    # The attributes socketio.admin.InstrumentedServer keeps the originals
    # under (``self.sio.__trigger_event`` in its source is this name).
    return f"_InstrumentedServer__{name}"


class _ServerInstrumentation(socketio.admin.InstrumentedServer):
    """python-socketio's Admin UI instrumentation, confined to one server.

    Written against python-socketio 5.12-5.18 (socketio/admin.py).
    """

    # Replaces socketio.admin.InstrumentedServer.instrument: upstream
    # patches engineio.socket.Socket itself (handle_post_request,
    # _websocket_handler, _send_ping), the class of every Engine.IO connection
    # of the process: the connections of another server would report to
    # this one, and a second instrumented server wraps the first's wrappers,
    # which then call themselves. Here those three go on this server's own
    # socket class (the _SocketTable's, see _install_outbound_limits). The
    # rest is upstream's, which touches only this server's objects; the
    # upgrade-check greenlet upstream starts per polling connection is left
    # out (the ping report gives the transport).
    def instrument(self):
        sio = self.sio
        sio.on("connect", self.admin_connect, namespace=self.admin_namespace)
        development = self.mode == "development"
        if development:
            if not self.read_only:
                sio.on("emit", self.admin_emit, namespace=self.admin_namespace)
                sio.on("join", self.admin_enter_room, namespace=self.admin_namespace)
                sio.on("leave", self.admin_leave_room, namespace=self.admin_namespace)
                sio.on("_disconnect", self.admin_disconnect, namespace=self.admin_namespace)
            manager = sio.manager
            manager._timestamps = {}
            setattr(sio, _mangled("trigger_event"), sio._trigger_event)
            sio._trigger_event = self._trigger_event
            setattr(manager, _mangled("basic_enter_room"), manager.basic_enter_room)
            manager.basic_enter_room = self._basic_enter_room
            setattr(manager, _mangled("basic_leave_room"), manager.basic_leave_room)
            manager.basic_leave_room = self._basic_leave_room
            setattr(manager, _mangled("emit"), manager.emit)
            manager.emit = self._emit
        sio.eio.on("connect", self._handle_eio_connect)
        sio.eio.on("disconnect", self._handle_eio_disconnect)
        setattr(sio.eio, _mangled("ok"), sio.eio._ok)
        sio.eio._ok = self._eio_http_response
        socket_class = sio.eio.sockets.socket_class
        patches = [("handle_post_request", type(self)._eio_handle_post_request),
                   ("_websocket_handler", type(self)._eio_websocket_handler)]
        if development:
            patches.append(("_send_ping", type(self)._eio_send_ping))
        for name, wrapper in patches:
            setattr(socket_class, _mangled(name.lstrip("_")), getattr(socket_class, name))
            setattr(socket_class, name, functools.partialmethod(wrapper, self))

    def uninstrument(self):
        raise NotImplementedError("the Admin UI instrumentation lasts as long as its server")

    # Replaces socketio.admin.InstrumentedServer._trigger_event: upstream
    # reports a connection before its connect handler ran (so a refused one
    # shows as connected, and never leaves), and fails on a connection
    # without a transport (sbio.testing's in-process client). Here a
    # connection is reported once accepted, if it has a transport.
    def _trigger_event(self, event, namespace, *args):
        trigger = getattr(self.sio, _mangled("trigger_event"))
        if event == "connect":
            result = trigger(event, namespace, *args)
            sid = args[0]
            eio_sid = self.sio.manager.eio_sid_from_sid(sid, namespace)
            if result is not False and eio_sid in self.sio.eio.sockets:
                now = time.time()
                self.sio.manager._timestamps[sid] = now
                self.sio.emit("socket_connected", (
                    self.serialize_socket(sid, namespace, eio_sid), _iso(now)),
                    namespace=self.admin_namespace)
            return result
        if event == "disconnect":
            sid = args[0]
            if self.sio.manager._timestamps.pop(sid, None) is not None:
                self.sio.emit("socket_disconnected", (namespace, sid, args[1], _iso(time.time())),
                              namespace=self.admin_namespace)
            return trigger(event, namespace, *args)
        return super()._trigger_event(event, namespace, *args)

    # Replaces socketio.admin.InstrumentedServer._emit_server_stats: upstream
    # lists the namespaces of socketio.Server.handlers only (sbio's live in
    # SocketIOServer.dispatchers) and sleeps before it looks at its stop event.
    def _emit_server_stats(self):
        start_time = time.time()
        sio = self.sio
        namespaces = sorted(set(sio.handlers) | set(sio.dispatchers))
        stop = self.stop_stats_event
        while not stop.wait(self.server_stats_interval):
            sockets = list(sio.eio.sockets.values())
            sio.emit("server_stats", {
                "serverId": self.server_id,
                "hostname": socketio.admin.HOSTNAME,
                "pid": os.getpid(),
                "uptime": time.time() - start_time,
                "clientsCount": len(sockets),
                "pollingClientsCount": len([s for s in sockets if not s.upgraded]),
                "aggregatedEvents": self.event_buffer.get_and_clear(),
                "namespaces": [{
                    "name": name,
                    "socketsCount": len(sio.manager.rooms.get(name, {}).get(None, ())),
                } for name in namespaces],
            }, namespace=self.admin_namespace)

    # Replaces socketio.admin.InstrumentedServer.shutdown, which joins the
    # stats greenlet without a bound: bounded here, then killed.
    def shutdown(self, timeout=1.0):
        task = getattr(self, "stats_task", None)
        self.stats_task = None
        if task is None:
            return
        self.stop_stats_event.set()
        task.join(timeout)
        if not task.dead:
            task.kill(block=True, timeout=1)


def _iso(timestamp):
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def instrument_admin(sio, auth, mode="development", read_only=True, namespace="/admin",
                     stats_interval=2.0):
    """Serve the socket.io Admin UI on *sio* (see :class:`_ServerInstrumentation`).

    *auth*: ``auth(client_auth) -> bool``, or False for none. Returns the
    instrumentation; its ``shutdown()`` stops the stats greenlet (the server
    calls it when it stops).
    """
    return _ServerInstrumentation(sio, auth=auth, mode=mode, read_only=read_only,
                                  namespace=namespace, server_stats_interval=stats_interval)
