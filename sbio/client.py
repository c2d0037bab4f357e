"""sbio.Client: a Python client for sbio servers (docs/python-client.md).

Calls that return the handler's data or raise :class:`sbio.RpcError`, live
subscriptions with callbacks, server events and server-to-client calls, and
reconnects with backoff and jitter that send every live subscription again
and deliver its fresh result (never the same result twice in a row), like
sbio.js. Built on python-socketio's threaded client: it works in a plain
threaded program and, after ``gevent.monkey.patch_all()``, inside a gevent
program (its threads are then greenlets), e.g. a ``DaemonTask`` of one sbio
server subscribing to another.

Threads a client owns (all stopped by :meth:`Client.close`): python-socketio's
transport threads, one that handles the received packets in order (it never
runs application code), one that runs application code (callbacks, event
handlers, in order, from a bounded backlog), and, while the connection is
down, one that reconnects.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import socketio

from .adapter import ClientSocket
from .errors import CallTimeout, ConnectionFailed, ConnectionRefused, PatchError, RpcError
from .protocol import ERROR_EVENT, SUBSCRIBE_EVENT, TIMEOUT, UNSUBSCRIBE_EVENT, UPDATE_EVENT

__all__ = ["Client", "Subscription", "CONNECTING", "OPEN", "CLOSED"]

log = logging.getLogger("sbio.client")

#: :attr:`Client.status`: the connection is down and being re-established
CONNECTING = "connecting"
#: :attr:`Client.status`: connected; calls and subscriptions go out at once
OPEN = "open"
#: :attr:`Client.status`: for good: :meth:`Client.close`, a refusal, the
#: server's ``Namespace.disconnect()``, or a drop with ``reconnect=False``
CLOSED = "closed"

#: names :meth:`Client.on` keeps for the client's own events
_LOCAL_EVENTS = frozenset({"connect", "disconnect"})
#: names socket.io reserves: a server never emits them as events
_RESERVED = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                       "newListener", "removeListener"})

Callback = Callable[..., Any]


def _library_logger(name: str) -> logging.Logger:
    """A logger for python-socketio / python-engineio inside sbio.Client.

    Those libraries log every packet at INFO: like their own default (the
    ``logger=False`` they would otherwise get), the logger starts at ERROR
    unless the application set its level.
    """
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return logger


def _check_transport_libraries(transports: list[str] | None) -> None:
    """Fail with how to fix it when python-socketio's client transports are not installed."""
    import importlib.util

    needed = {"polling": "requests", "websocket": "websocket"}
    missing = [needed[t] for t in (transports or ["polling", "websocket"])
               if t in needed and importlib.util.find_spec(needed[t]) is None]
    if missing:
        raise ImportError(f"sbio.Client needs {', '.join(missing)} (the transports of "
                          "python-socketio's client): pip install 'sbio[client]'")


def _canonical(value: Any) -> str:
    """JSON with sorted keys: two equal results encode the same (bytes via repr)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _error_of(error: Any) -> RpcError:
    """The exception for a wire ``error`` object ``{"code", "message"}``."""
    if not isinstance(error, dict):
        return RpcError("bad_response", f"malformed error from the server: {error!r:.200}")
    code = error.get("code")
    message = error.get("message", "")
    if code == TIMEOUT:
        return CallTimeout(message)
    if not isinstance(code, str) or not code:
        code = "internal"
    return RpcError(code, message if isinstance(message, str) else str(message))


def _is_envelope(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("ok"), bool)


def _split_url(url: str, namespace: str) -> tuple[str, str]:
    """``(server URL without path, namespace)``: a path in *url* names the namespace."""
    if not isinstance(url, str):
        raise TypeError(f"sbio.Client: url must be a string, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"sbio.Client: {url!r} is not an http(s):// URL of a server")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"sbio.Client: namespace must be a path like '/chat', got {namespace!r}")
    if not namespace.startswith("/"):
        namespace = "/" + namespace
    path = parts.path.rstrip("/")
    if path:
        if namespace not in ("/", path):
            raise ValueError(f"sbio.Client: the URL names namespace {path!r} and namespace= "
                             f"{namespace!r}: give it once")
        namespace = path
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", parts.query, "")), namespace


class _Throttle:
    """Logs the first line of each kind (its format string) at once, then at most one per
    *period* seconds, with a count of the rest. The kinds are this module's format strings:
    a fixed, small set."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._kinds: dict[str, list[float]] = {}  # msg -> [next time, suppressed]
        self._lock = threading.Lock()

    def __call__(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            kind = self._kinds.setdefault(msg, [0.0, 0])
            if now < kind[0]:
                kind[1] += 1
                return
            suppressed = int(kind[1])
            kind[:] = [now + self.period, 0]
        if suppressed:
            msg += " (and %d more like it in the last %d s)"
            args += (suppressed, int(self.period))
        log.log(level, msg, *args, exc_info=exc_info)


class _Worker:
    """Runs application code in order on one thread, from a backlog of at most *max_backlog* jobs.

    Past the bound the backlog is dropped and *on_overflow(count)* is called
    (in the submitting thread): the client then resynchronises (see
    :meth:`Client._overflow`).
    """

    def __init__(self, max_backlog: int, on_overflow: Callable[[int], None]) -> None:
        self.max_backlog = max_backlog
        self._on_overflow = on_overflow
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._runner: threading.Thread | None = None
        self._stopped = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        dropped = 0
        with self._cond:
            if self._stopped:
                return
            if len(self._jobs) >= self.max_backlog:
                dropped = len(self._jobs) + 1
                self._jobs.clear()
            else:
                self._jobs.append((fn, args))
                if self._runner is None:
                    self._runner = threading.Thread(target=self._run, daemon=True,
                                                    name="sbio.Client callbacks")
                    self._runner.start()
                self._cond.notify()
        if dropped:
            self._on_overflow(dropped)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if not self._jobs:  # stopped, and what was queued has run
                    return
                fn, args = self._jobs.popleft()
            try:
                fn(*args)
            except Exception:  # the jobs log their own errors: this is a bug of the client
                log.exception("sbio.Client: a callback job failed")

    def is_current(self) -> bool:
        return self._runner is not None and self._runner is threading.current_thread()

    def stop(self, timeout: float) -> None:
        """Take no more jobs; run what is queued for up to *timeout* s, then drop the rest."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._runner
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._jobs.clear()


class _Pending:
    """One call waiting for its ack."""

    __slots__ = ("event", "done", "values", "error")

    def __init__(self, event: str) -> None:
        self.event = event
        self.done = threading.Event()
        self.values: list[Any] = []  # the ack's arguments
        self.error: BaseException | None = None

    def resolve(self, *values: Any) -> None:
        if not self.done.is_set():
            self.values = list(values)
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Subscription:
    """A live subscription of a :class:`Client` (from :meth:`Client.subscribe`).

    :ivar data: the latest result delivered (the first one, then each changed one).
    :ivar trigger: what produced :attr:`data`: ``"subscribe"``, ``"resubscribe"``
        (after a reconnect), or the server's trigger of a push.
    :ivar error: the :class:`~sbio.RpcError` of the latest delivery if it was
        an error (a re-run failed on the server), else None.
    :ivar active: False once unsubscribed or the client is closed.
    :ivar delta: the server was asked for JSON Patch pushes (``delta=True``);
        they are applied here, so :attr:`data` and callbacks get whole values.
    """

    def __init__(self, client: Client, id: str, event: str, args: list[Any],
                 callback: Callback | None, on_error: Callback | None,
                 delta: bool = False) -> None:
        self.client = client
        self.id = id
        self.event = event
        self.args = args
        self.delta = delta
        self.callback = callback
        self.on_error = on_error
        self.data: Any = None
        self.trigger: str | None = None
        self.error: RpcError | None = None
        self.active = True
        # bookkeeping, guarded by the client's lock
        self._gen = 0  # bumped on every sbio:subscribe sent: older acks are ignored
        self._sent = False
        self._updated_since_send = False
        self._has_last = False
        self._last_key: str | None = None
        self._version = 0  # deliveries (data or error) so far
        self._seen = 0  # the version wait_update returned last
        self._first: bool | RpcError | None = None  # outcome of the first result
        self._first_version = 0
        # delta: the value of the last data push since the latest sbio:subscribe, which
        # the next patch applies to (docs/protocol.md, "Delta pushes"); _has_base False:
        # none yet (or an error came since), so patches are dropped
        self._base: Any = None
        self._has_base = False

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return f"<sbio.Subscription {self.id} {self.event}{tuple(self.args)!r} {state}>"

    def wait_update(self, timeout: float | None = None) -> Any:
        """Wait for a delivery newer than the last one this method returned; return its data.

        The first call waits for the first change after :meth:`Client.subscribe`
        returned. Deliveries in between are coalesced: this returns the
        newest (use a callback to see each one). A delivered error raises
        its :class:`~sbio.RpcError`.

        :param timeout: seconds (the client's ``timeout`` by default).
        :raises sbio.CallTimeout: nothing new within *timeout*.
        :raises sbio.RpcError: code ``closed`` once the subscription or the
            client has ended.
        """
        client = self.client
        timeout = client.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        with client._cond:
            while self._version <= self._seen:
                if not self.active:
                    raise RpcError("closed", f"subscription {self.id} ({self.event}) has ended")
                if client.status == CLOSED:
                    raise client._closed_error()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallTimeout(f"no update of subscription {self.id} ({self.event}) "
                                      f"within {timeout:g} s")
                client._cond.wait(left)
            self._seen = self._version
            if self.error is not None:
                raise self.error
            return self.data

    def unsubscribe(self) -> None:
        """End this subscription (idempotent)."""
        self.client.unsubscribe(self)


class Client:
    """A connection to one namespace of an sbio server.

    Connects in the constructor (and raises if that fails), then keeps the
    connection up by itself until :meth:`close`.

    :param url: the server, e.g. ``"http://127.0.0.1:8282"``. A path in it
        names the namespace: ``"http://127.0.0.1:8282/chat"``.
    :param namespace: the namespace, e.g. ``"/chat"`` (or in *url*).
    :param auth: the handshake payload ``Namespace.on_connect(auth)`` gets:
        a dict, or a function returning one, called on every (re)connect.
    :param transports: ``["websocket"]``, ``["polling"]``, or None:
        python-socketio's default (long-polling, upgraded to a websocket).
    :param timeout: seconds for the first connection, and the default of
        :meth:`call`, :meth:`subscribe` and :meth:`Subscription.wait_update`.
    :param reconnect: reconnect after the connection drops (a server
        restart, a network failure). Not after a refusal or the server's
        ``Namespace.disconnect()``, which end the client as :meth:`close` does.
    :param headers: extra HTTP headers of the handshake.
    :param reconnect_delay: seconds before the first reconnection attempt;
        the delay doubles with each failed attempt ...
    :param reconnect_delay_max: ... up to this; each delay is jittered by
        ±50 %, so clients do not all come back at one instant.
    :param max_backlog: callbacks and event handlers waiting to run. One
        more (a callback slower than the server's pushes) drops the backlog,
        is logged once, and the client reconnects, which delivers every
        subscription's current result.
    :param handlers: ``{event: fn}`` registered with :meth:`on` before the
        connection opens, for events the server emits at once (from
        ``on_connect``), which a handler registered after the constructor
        returned could miss.
    :raises sbio.ConnectionRefused: the namespace refused the connection
        (``message`` and ``data`` are the server's).
    :raises sbio.ConnectionFailed: the server could not be reached or did not
        answer within *timeout*.
    """

    def __init__(self, url: str, namespace: str = "/", *, auth: Any = None,
                 transports: Iterable[str] | None = None, timeout: float = 10,
                 reconnect: bool = True, headers: dict[str, str] | None = None,
                 reconnect_delay: float = 0.5, reconnect_delay_max: float = 10.0,
                 max_backlog: int = 10_000,
                 handlers: dict[str, Callback] | None = None) -> None:
        self.url, self.namespace = _split_url(url, namespace)
        self.auth = auth
        self.transports = list(transports) if transports is not None else None
        self.timeout = float(timeout)
        self.reconnect = bool(reconnect)
        self.headers = dict(headers or {})
        self.reconnect_delay = float(reconnect_delay)
        self.reconnect_delay_max = max(float(reconnect_delay_max), self.reconnect_delay)
        if max_backlog < 1:
            raise ValueError("sbio.Client: max_backlog must be at least 1")
        _check_transport_libraries(self.transports)
        #: :data:`CONNECTING`, :data:`OPEN` or :data:`CLOSED`
        self.status = CONNECTING
        #: the :class:`~sbio.ConnectionRefused` that ended the client, if one did
        self.refused: ConnectionRefused | None = None

        self._cond = threading.Condition(threading.RLock())
        self._connected = False  # the namespace is joined (set on the packet thread)
        self._epoch = 0  # bumped on every connect and disconnect
        self._closing = False
        self._kicked = False
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._pending: set[_Pending] = set()
        self._subs: dict[str, Subscription] = {}
        self._next_sub = 0
        self._handlers: dict[str, Callback] = {}
        self._connect_hooks: list[Callback] = []
        self._local = threading.local()  # .hook: this thread runs the "connect" hooks
        self._errors = _Throttle()
        self._worker = _Worker(int(max_backlog), self._overflow)
        self._sio = ClientSocket(
            self._on_event, reconnection=False, handle_sigint=False,
            request_timeout=self.timeout,
            logger=_library_logger("sbio.client.socketio"),
            engineio_logger=_library_logger("sbio.client.engineio"))
        self._sio.on("connect", self._on_connect, namespace=self.namespace)
        self._sio.on("disconnect", self._on_disconnect, namespace=self.namespace)
        for event, fn in (handlers or {}).items():
            self.on(event, fn)
        try:
            self._connect_once()
        except BaseException:
            with self._cond:
                self._closing = True
                self.status = CLOSED
            self._stop_threads(1.0)
            raise
        log.info("sbio.Client connected to %s (namespace %s)", self.url, self.namespace)
        self._opened(reconnect=False)

    def __repr__(self) -> str:
        return f"<sbio.Client {self.url} {self.namespace} {self.status}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the connection is up now (:attr:`status` is ``"open"``)."""
        return self.status == OPEN

    def transport(self) -> str | None:
        """The transport in use now: ``"websocket"`` or ``"polling"`` (None while down)."""
        return self._sio.transport() if self._connected else None

    @property
    def sid(self) -> str | None:
        """The socket.io sid of the current connection (None while down)."""
        return self._sio.get_sid(self.namespace) if self._connected else None

    # -- calls and events -----------------------------------------------------------------

    def call(self, event: str, *args: Any, timeout: float | None = None) -> Any:
        """Call the server's ``on_<event>(*args)``; return the ``data`` of its answer.

        While the client reconnects, the call waits for the connection
        (within the same *timeout*), then is sent.

        :param timeout: seconds (the client's ``timeout`` by default).
        :raises sbio.RpcError: the server answered with an error (``code``
            and ``message`` are the server's: ``forbidden``, ``not_found``,
            ``bad_request``, ``internal``, an application code), or the client
            could not get an answer: ``disconnected`` (the connection dropped
            while the call was out: it may or may not have run), ``closed``,
            ``connection_refused``, ``bad_response`` (not an sbio envelope).
        :raises sbio.CallTimeout: no answer within *timeout*, or the server
            answered ``timeout``.
        :raises TypeError: an argument cannot be sent as JSON.
        """
        envelope = self._call_envelope(event, args, timeout)
        if not _is_envelope(envelope):
            raise RpcError("bad_response", f"malformed reply to {event!r}: {envelope!r:.200}")
        if envelope["ok"]:
            return envelope.get("data")
        raise _error_of(envelope.get("error"))

    def _call_envelope(self, event: str, args: tuple[Any, ...] | list[Any],
                       timeout: float | None) -> Any:
        """Send *event* with an ack; return the ack's first value as it came (an envelope).

        Raises what :meth:`call` raises when there is no answer (CallTimeout,
        RpcError ``disconnected`` / ``closed`` / ``connection_refused``). Used
        by :meth:`call` and by the pytest plugin's ``LiveClient`` (its
        ``call_envelope``).
        """
        values = self._call_ack_args(event, args, timeout)
        return values[0] if values else None

    def _call_ack_args(self, event: str, args: tuple[Any, ...] | list[Any],
                       timeout: float | None) -> list[Any]:
        """Send *event* with an ack; return every argument of the ack (raw handlers)."""
        timeout = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        pending = _Pending(event)
        self._send(event, tuple(args), deadline, timeout, pending)
        try:
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                raise CallTimeout(f"no reply to {event!r} within {timeout:g} s")
        finally:
            with self._cond:
                self._pending.discard(pending)
        if pending.error is not None:
            raise pending.error
        return pending.values

    def emit(self, event: str, *args: Any) -> None:
        """Emit *event* without waiting for an answer.

        If the server fails to handle it, it pushes ``sbio:error`` (see
        :meth:`on`). While the client reconnects, it waits for the connection
        (up to the client's ``timeout``).

        :raises sbio.CallTimeout: not connected within the client's timeout.
        :raises sbio.RpcError: code ``closed`` or ``connection_refused``.
        """
        self._send(event, args, time.monotonic() + self.timeout, self.timeout, None)

    def on(self, event: str, fn: Callback | None = None) -> Any:
        """Handle *event*: ``fn(*args)`` runs for each such event the server emits.

        One handler per event (a second ``on`` replaces the first; ``off``
        removes it). Also a decorator: ``@client.on("news")``. If the server
        sent the event with :meth:`Namespace.call`, *fn*'s return value is the
        answer (a tuple: several values). Handlers and subscription callbacks
        run one at a time, in order, on the client's callback thread; an
        exception is logged and the server's call gets no answer (it times
        out).

        Special names: ``"connect"``: ``fn()`` after every reconnect, before
        the subscriptions are sent again; calls made in it go out at once (log
        in again, for instance). Several may be registered.
        ``"disconnect"``: ``fn(reason)`` when the connection drops.
        ``"sbio:error"``: ``fn(error)`` with ``{"event", "code", "message"}``
        for an emitted event that failed (logged as a warning when unhandled).
        ``"*"``: ``fn(event, *args)`` for every event the server sends, sbio's
        own (``sbio:update``, ``sbio:error``) included, before it is handled
        as usual; its return value answers nothing (a log, a test's record).
        """
        if fn is None:
            def decorator(func: Callback) -> Callback:
                self.on(event, func)
                return func
            return decorator
        if not callable(fn):
            raise TypeError(f"sbio.Client.on: {fn!r} is not callable")
        with self._cond:
            if event == "connect":
                self._connect_hooks.append(fn)
            else:
                self._handlers[event] = fn
        return fn

    def off(self, event: str, fn: Callback | None = None) -> None:
        """Remove the handler of *event* (for ``"connect"``: *fn*, or all)."""
        with self._cond:
            if event == "connect":
                self._connect_hooks = [h for h in self._connect_hooks
                                       if fn is not None and h is not fn]
            else:
                self._handlers.pop(event, None)

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, event: str, *args: Any, callback: Callback | None = None,
                  on_error: Callback | None = None, timeout: float | None = None,
                  delta: bool = False) -> Subscription:
        """Subscribe to the server's ``@subscribes`` handler ``on_<event>(*args)``.

        Waits for the first result (in ``.data`` of the returned
        :class:`Subscription`). ``callback(data)`` gets that first result and
        every changed result after it, including the fresh result after each
        reconnect, never the same result twice in a row. ``on_error(error)``
        gets an :class:`~sbio.RpcError` when a re-run fails on the server, or
        when the subscription is refused after a reconnect (without
        *on_error* it is logged). The subscription stays live across
        reconnects until :meth:`Subscription.unsubscribe` or :meth:`close`.

        ``delta=True`` asks the server to push changed results as JSON
        Patches against the previous one when that is smaller
        (``"delta": true``, see docs/protocol.md); the client applies them, so
        ``.data`` and *callback* get whole values either way.

        :raises sbio.RpcError: the server refused it (``forbidden``,
            ``not_found``, ``bad_request``, ...), or the client is closed;
            nothing stays subscribed.
        :raises sbio.CallTimeout: no first result within *timeout*.
        """
        timeout = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            if self.status == CLOSED:
                raise self._closed_error()
            self._next_sub += 1
            sub = Subscription(self, f"s{self._next_sub}", event, list(args), callback, on_error,
                               bool(delta))
            self._subs[sub.id] = sub
            send_now = self._usable()
        if send_now:
            self._sub_send(sub)
        failure: RpcError
        with self._cond:
            while True:
                if sub._first is True:
                    sub._seen = sub._first_version
                    return sub
                if isinstance(sub._first, RpcError):
                    failure = sub._first
                    break
                if self.status == CLOSED:
                    failure = self._closed_error()
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    failure = CallTimeout(f"no first result of {event!r} within {timeout:g} s")
                    break
                self._cond.wait(left)
        self.unsubscribe(sub)
        raise failure

    def unsubscribe(self, *subscriptions: Subscription | str) -> int:
        """End subscriptions (:class:`Subscription` objects or ids); return how many were live.

        Results already on the way are dropped. While the connection is down
        nothing is sent: the server forgot them with the connection.
        """
        ids = []
        count = 0
        with self._cond:
            for item in subscriptions:
                sub_id = item.id if isinstance(item, Subscription) else str(item)
                sub = self._subs.pop(sub_id, None)
                if sub is None:
                    continue
                count += 1
                sub.active = False
                if sub._sent:
                    ids.append(sub_id)
            send = bool(ids) and self._usable()
            self._cond.notify_all()
        if send:
            # dropped meanwhile (BadNamespaceError): the server forgot them
            with contextlib.suppress(socketio.exceptions.BadNamespaceError):
                self._emit_raw(UNSUBSCRIBE_EVENT, ({"ids": ids},), None)
        return count

    def subscriptions(self) -> list[Subscription]:
        """The live subscriptions."""
        with self._cond:
            return list(self._subs.values())

    # -- closing ------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect for good and stop the client's threads (within *timeout* s). Idempotent.

        Waiting calls raise :class:`~sbio.RpcError` ``closed``; callbacks and
        handlers already queued still run (within *timeout*); subscriptions end.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self.status = CLOSED
            pending = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        self._stop.set()
        for call in pending:
            call.fail(RpcError("closed",
                               f"the client was closed before {call.event!r} was answered"))
        self._stop_threads(timeout)  # callbacks already queued still run (within timeout)
        with self._cond:
            for sub in self._subs.values():
                sub.active = False
            self._cond.notify_all()
        log.info("sbio.Client closed (%s, namespace %s)", self.url, self.namespace)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until :attr:`status` is ``"closed"``; False if *timeout* ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.status != CLOSED:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _stop_threads(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(max(0.0, deadline - time.monotonic()))
        try:
            self._sio.disconnect()
        except Exception:  # already gone
            log.debug("sbio.Client: disconnect at close failed", exc_info=True)
        self._sio.abort()
        self._sio.stop_dispatch(max(0.0, deadline - time.monotonic()))
        self._worker.stop(max(0.0, deadline - time.monotonic()))

    # -- connecting -------------------------------------------------------------------------

    def _connect_once(self) -> None:
        """One connection attempt. Raises ConnectionRefused or ConnectionFailed."""
        self._sio.kicked = False
        self._sio.refusal = None
        try:
            self._sio.connect(self.url, headers=self.headers, auth=self.auth,
                              transports=self.transports, namespaces=[self.namespace],
                              wait_timeout=self.timeout)
        except (socketio.exceptions.ConnectionError, ValueError, OSError) as exc:
            self._sio.abort()  # a polling transport would otherwise wait out its long-poll
            refusal = self._sio.refusal
            if refusal is not None:
                message = refusal.get("message") if isinstance(refusal, dict) else refusal
                data = refusal.get("data") if isinstance(refusal, dict) else None
                raise ConnectionRefused(message or "Connection refused", data) from None
            raise ConnectionFailed(f"cannot connect to {self.url} (namespace {self.namespace}): "
                                   f"{exc}") from None

    def _opened(self, reconnect: bool) -> None:
        """After a connect: the "connect" hooks (on reconnects), status open, subscriptions sent."""
        with self._cond:
            if not self._connected or self._closing:
                return
            epoch = self._epoch
            hooks = list(self._connect_hooks) if reconnect else []
        if hooks:
            self._local.hook = True
            try:
                for hook in hooks:
                    try:
                        hook()
                    except Exception:
                        self._errors(logging.ERROR, "sbio.Client: the connect hook %r failed",
                                     hook, exc_info=True)
            finally:
                self._local.hook = False
        with self._cond:
            if not self._connected or self._closing or self._epoch != epoch:
                return  # dropped again meanwhile: the next connect does this
            self.status = OPEN
            subs = list(self._subs.values())
            self._cond.notify_all()
        for sub in subs:
            self._sub_send(sub)

    def _on_connect(self) -> None:  # packet thread: the namespace is joined
        with self._cond:
            self._connected = True
            self._epoch += 1

    def _on_disconnect(self, reason: Any = None) -> None:  # packet thread
        with self._cond:
            if not self._connected:
                return
            self._connected = False
            self._epoch += 1
            pending = list(self._pending)
            self._pending.clear()
            kicked = self._sio.kicked
            if self._closing:
                retry = False
            elif kicked or not self.reconnect:
                retry = False
                self._kicked = kicked
                self.status = CLOSED
                for sub in self._subs.values():
                    sub.active = False
            else:
                retry = True
                self.status = CONNECTING
                if self._supervisor is None:
                    self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                        name="sbio.Client reconnect")
                    self._supervisor.start()
            handler = self._handlers.get("disconnect")
            self._cond.notify_all()
        for call in pending:
            call.fail(RpcError("disconnected", f"the connection dropped before {call.event!r} "
                               "was answered"))
        if self._closing:
            return
        if kicked:
            log.warning("sbio.Client: the server closed the connection to %s (namespace %s): "
                        "not reconnecting", self.url, self.namespace)
        elif retry:
            log.warning("sbio.Client: lost the connection to %s (namespace %s: %s); reconnecting",
                        self.url, self.namespace, reason)
        else:
            log.warning("sbio.Client: lost the connection to %s (namespace %s: %s)",
                        self.url, self.namespace, reason)
        if handler is not None:
            self._worker.submit(self._run_handler, "disconnect", handler, [reason], None, None)

    def _supervise(self) -> None:
        """The reconnect thread: attempts with backoff and jitter until connected or closed."""
        attempt = 0
        failures = 0
        try:
            while True:
                with self._cond:
                    if self._closing or self._connected or self.status == CLOSED:
                        self._supervisor = None
                        return
                if self._stop.wait(self._backoff(attempt)):
                    return
                # the old connection's last packets and its disconnect first
                self._sio.flush(self.timeout)
                attempt += 1
                try:
                    self._connect_once()
                except ConnectionRefused as exc:
                    with self._cond:
                        self.refused = exc
                        self.status = CLOSED
                        for sub in self._subs.values():
                            sub.active = False
                        self._supervisor = None
                        self._cond.notify_all()
                    log.warning("sbio.Client: %s (namespace %s) refused the reconnection: %s",
                                self.url, self.namespace, exc.message)
                    return
                except ConnectionFailed as exc:
                    failures += 1
                    log.log(logging.INFO if failures == 1 else logging.DEBUG,
                            "sbio.Client: reconnection attempt %d failed: %s", attempt, exc)
                    continue
                if self._closing:
                    self._sio.disconnect()
                    return
                log.info("sbio.Client reconnected to %s (namespace %s) after %d attempt(s)",
                         self.url, self.namespace, attempt)
                self._opened(reconnect=True)
                attempt = 0
        finally:
            with self._cond:
                if self._supervisor is threading.current_thread():
                    self._supervisor = None

    def _backoff(self, attempt: int) -> float:
        base = min(self.reconnect_delay_max, self.reconnect_delay * 2 ** min(attempt, 30))
        return base * random.uniform(0.5, 1.5)

    def _closed_error(self) -> RpcError:
        if self.refused is not None:
            return RpcError("connection_refused", self.refused.message)
        if self._kicked:
            return RpcError("closed", "the server closed the connection")
        if not self._closing:
            return RpcError("closed", "the connection dropped (reconnect=False)")
        return RpcError("closed", "the client is closed")

    # -- sending ----------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether packets may go out now: open, or in a "connect" hook of a live connection."""
        return self.status == OPEN or (self._connected and getattr(self._local, "hook", False))

    def _send(self, event: str, args: tuple[Any, ...], deadline: float, timeout: float,
              pending: _Pending | None) -> None:
        if not isinstance(event, str) or not event:
            raise ValueError("sbio.Client: the event name must be a non-empty string, "
                             f"got {event!r}")
        if event in _RESERVED:
            raise ValueError(f"sbio.Client: {event!r} is reserved by socket.io")
        while True:
            with self._cond:
                while not self._usable():
                    if self.status == CLOSED:
                        raise self._closed_error()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CallTimeout(f"not connected to {self.url}{self.namespace}: {event!r} "
                                          f"not sent within {timeout:g} s")
                    self._cond.wait(left)
                if pending is not None:
                    self._pending.add(pending)
            try:
                self._emit_raw(event, args, pending.resolve if pending is not None else None)
                return
            except socketio.exceptions.BadNamespaceError:  # dropped since: wait for the next one
                with self._cond:
                    if pending is not None:
                        self._pending.discard(pending)
                time.sleep(0.01)
            except BaseException:
                with self._cond:
                    if pending is not None:
                        self._pending.discard(pending)
                raise

    def _emit_raw(self, event: str, args: tuple[Any, ...],
                  callback: Callable[..., None] | None) -> None:
        self._sio.emit(event, tuple(args), namespace=self.namespace, callback=callback)

    def _sub_send(self, sub: Subscription) -> None:
        with self._cond:
            if self._subs.get(sub.id) is not sub:
                return
            trigger = "resubscribe" if sub._sent else "subscribe"
            sub._gen += 1
            gen = sub._gen
            sub._sent = True
            sub._updated_since_send = False
            sub._has_base = False  # a patch before the next whole push is the old one's
            sub._base = None

        def ack(*values: Any) -> None:
            self._subscribe_acked(sub, gen, trigger, values[0] if values else None)

        payload: dict[str, Any] = {"id": sub.id, "event": sub.event, "args": sub.args}
        if sub.delta:
            payload["delta"] = True
        # dropped meanwhile (BadNamespaceError): sent again on reconnect
        with contextlib.suppress(socketio.exceptions.BadNamespaceError):
            self._emit_raw(SUBSCRIBE_EVENT, (payload,), ack)

    # -- receiving (the packet thread: nothing here blocks or runs application code) --------

    def _subscribe_acked(self, sub: Subscription, gen: int, trigger: str, envelope: Any) -> None:
        with self._cond:
            if self._subs.get(sub.id) is not sub or sub._gen != gen:
                return  # unsubscribed, or sent again since
            if not _is_envelope(envelope):
                self._deliver_error(sub, RpcError(
                    "bad_response", f"malformed reply to sbio:subscribe: {envelope!r:.200}"), True)
            elif not envelope["ok"]:
                self._deliver_error(sub, _error_of(envelope.get("error")), True)
            elif not sub._updated_since_send:
                self._deliver(sub, envelope.get("data"), trigger)
            # else: an update that overtook this ack was computed after the
            # server recorded the subscription: it is at least as fresh

    def _deliver(self, sub: Subscription, data: Any, trigger: Any) -> None:
        key = _canonical(data)
        if sub._has_last and sub._last_key == key:
            return  # the same result again (after a reconnect, or a push racing a resubscribe)
        sub._has_last = True
        sub._last_key = key
        sub.data = data
        sub.trigger = trigger
        sub.error = None
        sub._version += 1
        if sub._first is None:
            sub._first = True
            sub._first_version = sub._version
        self._cond.notify_all()
        if sub.callback is not None:
            self._worker.submit(self._run_callback, sub, sub.callback, data)

    def _deliver_error(self, sub: Subscription, error: RpcError, from_ack: bool = False) -> None:
        sub._has_last = False  # the next good result is delivered even if unchanged
        if from_ack and sub._first is None:
            sub._first = error  # subscribe() raises it
            self._cond.notify_all()
            return
        sub.error = error
        sub._version += 1
        self._cond.notify_all()
        if sub.on_error is not None:
            self._worker.submit(self._run_callback, sub, sub.on_error, error)
        else:
            self._errors(logging.WARNING, "sbio.Client: subscription %s (%s) failed: %s",
                         sub.id, sub.event, error)

    def _on_event(self, event: Any, args: list[Any], reply: Callable[..., None] | None) -> None:
        tap = self._handlers.get("*")
        if tap is not None:
            self._worker.submit(self._run_handler, "*", tap, [event, *args], None, None)
        if event == UPDATE_EVENT:
            body = args[0] if args else None
            if not isinstance(body, dict):
                return
            resend = False
            with self._cond:
                sub = self._subs.get(str(body.get("id")))
                if sub is None:
                    return  # unsubscribed: a late push
                if body.get("error") is not None:
                    sub._updated_since_send = True
                    sub._has_base = False  # the next data push is whole
                    self._deliver_error(sub, _error_of(body["error"]))
                elif "patch" in body:
                    resend = self._patched(sub, body)
                else:
                    sub._updated_since_send = True
                    data = body.get("data")
                    if sub.delta:
                        sub._base, sub._has_base = data, True
                    self._deliver(sub, data, body.get("trigger"))
            if resend:
                self._sub_send(sub)  # a whole result comes back in the ack
            return
        with self._cond:
            handler = self._handlers.get(event) if isinstance(event, str) else None
            epoch = self._epoch
        if handler is None:
            if event == ERROR_EVENT:
                self._errors(logging.WARNING, "sbio.Client: the server reported an error: %s",
                             args[0] if args else None)
            elif reply is not None:
                self._errors(logging.WARNING, "sbio.Client: the server called %r, which has no "
                             "handler (Client.on): not answered", event)
            return
        self._worker.submit(self._run_handler, event, handler, args, reply, epoch)

    def _patched(self, sub: Subscription, body: dict[str, Any]) -> bool:
        """Apply a ``patch`` push to the last pushed value and deliver the result (lock
        held); True when it did not apply and the subscription is to be sent again."""
        if not sub._has_base:
            # before any whole push since the latest sbio:subscribe: it belongs to the
            # subscription that one replaced (the server pushes whole first)
            log.debug("sbio.Client: subscription %s (%s): patch before a whole push dropped",
                      sub.id, sub.event)
            return False
        from .live.patch import apply_patch  # only delta subscribers need it

        try:
            value = apply_patch(sub._base, body["patch"])
        except PatchError as exc:
            # not the value the server patched: ask again (the ack carries a whole result)
            self._errors(logging.WARNING, "sbio.Client: subscription %s (%s): a pushed patch "
                         "does not apply (%s); subscribing again", sub.id, sub.event, exc)
            sub._has_base = False
            return True
        sub._updated_since_send = True
        sub._base = value
        self._deliver(sub, value, body.get("trigger"))
        return False

    # -- running application code (the callback thread) ------------------------------------

    def _run_callback(self, sub: Subscription, fn: Callback, value: Any) -> None:
        if not sub.active:
            return
        try:
            fn(value)
        except Exception:
            self._errors(logging.ERROR, "sbio.Client: the callback of subscription %s (%s) "
                         "raised", sub.id, sub.event, exc_info=True)

    def _run_handler(self, event: str, fn: Callback, args: list[Any],
                     reply: Callable[..., None] | None, epoch: int | None) -> None:
        try:
            result = fn(*args)
        except Exception:
            self._errors(logging.ERROR, "sbio.Client: the handler of %r raised%s", event,
                         " (the server's call is not answered)" if reply else "", exc_info=True)
            return
        if reply is None:
            return
        with self._cond:
            if self._epoch != epoch:
                return  # the connection that asked is gone
        values = () if result is None else result if isinstance(result, tuple) else (result,)
        try:
            reply(*values)
        except Exception:
            self._errors(logging.ERROR, "sbio.Client: cannot answer the server's call %r",
                         event, exc_info=True)

    def _overflow(self, dropped: int) -> None:
        """The callback backlog is full: drop it, reconnect, deliver every result afresh."""
        self._errors(logging.WARNING, "sbio.Client: %d callbacks waiting to run "
                           "(max_backlog %d): dropped them; reconnecting to deliver the current "
                           "results", dropped, self._worker.max_backlog)
        with self._cond:
            for sub in self._subs.values():
                sub._has_last = False
        threading.Thread(target=self._sio.disconnect, daemon=True,
                         name="sbio.Client resync").start()
