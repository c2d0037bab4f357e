"""The :class:`Namespace` base class: one instance per (connection, namespace).

python-socketio's class-based namespaces are singletons shared by every
client. sbio instead creates one instance of your subclass for each
connection to the namespace (see :mod:`sbio.dispatch`), so connection state
lives on ``self``: ``self.session``, the ACL, spawned greenlets.

Handlers are methods named ``on_<event>``, or methods marked with
:func:`event` for any other event name. A client emitting ``login`` with an
ack runs ``on_login`` and receives ``{"ok": true, "data": <return value>}``
or ``{"ok": false, "error": {"code": ..., "message": ...}}``; a raw handler
(``@event(name, raw=True)``, or every handler of a class with
``raw_acks = True``) acks its return value as it is, as plain socket.io
servers do.
"""
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import gevent
from gevent.pool import Group

from .context import current_call
from .errors import SbioError, SbioTimeoutError
from .flask_context import call_in
from .hub import real_thread_ident as _thread_ident
from .protocol import EVENT_NAME_RE, RESERVED_EVENT_NAMES, event_name_problem

if TYPE_CHECKING:
    import greenlet  # gevent's dependency; only a type here

__all__ = ["Namespace", "event", "EventHandler"]

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Methods named ``on_*`` that are lifecycle hooks, never client events.
RESERVED_HANDLERS = frozenset({"on_connect", "on_disconnect", "on_startup", "on_shutdown"})


def event(name: str, *, raw: bool | None = None) -> Callable[[_F], _F]:
    """Make the decorated :class:`Namespace` method the handler of event *name*.

    *name* is any string a socket.io client emits (``"chat message"``,
    ``"message-with-ack"``), up to 128 characters; sbio's own ``sbio:*`` names,
    socket.io's reserved ones (``connect``, ``disconnect``, ...), the empty
    string and control characters are refused with ``ValueError``. The ACL
    knows the handler by its event name. Stack the decorator to give one
    method several names. The function is returned unchanged.

    :param raw: True acks the handler's return value as plain socket.io does
        (a tuple is several ack arguments, None none) instead of sbio's
        envelope; a failure then acks ``{"error": {"code", "message"}}``.
        False keeps the envelope; None (the default) follows the class's
        :attr:`Namespace.raw_acks`.
    """
    if not isinstance(name, str):
        raise TypeError("use @sbio.event(...) with parentheses and the event name, "
                        "e.g. @sbio.event('chat message')")
    problem = event_name_problem(name)
    if problem is not None:
        raise ValueError(f"@sbio.event({name!r}): {problem}")
    if raw is not None and not isinstance(raw, bool):
        raise TypeError(f"@sbio.event({name!r}): raw must be True, False or None, got {raw!r}")

    def decorate(func: _F) -> _F:
        if isinstance(func, (staticmethod, classmethod)):
            raise TypeError(f"@sbio.event({name!r}) on a {type(func).__name__}: handlers must "
                            "be plain methods (put @sbio.event above def, without it)")
        if not inspect.isfunction(func):
            raise TypeError(f"@sbio.event({name!r}) decorates a method, not {func!r}")
        marks = getattr(func, "_sbio_events", ())
        func._sbio_events = (*marks, (name, raw))  # type: ignore[attr-defined]  # a mark
        return func

    return decorate


class EventHandler(NamedTuple):
    """One client event a :class:`Namespace` class handles (:meth:`Namespace.event_handlers`)."""

    #: the event name on the wire
    event: str
    #: the name the ACL knows it by: ``"on_<event>"``, or the event name of a
    #: handler registered with :func:`event`
    acl_name: str
    #: the method's attribute name
    attr: str
    #: the plain function
    func: Callable[..., Any]
    #: acks the return value as it is, not in sbio's envelope
    raw: bool


def _handler_table(cls: type["Namespace"]) -> dict[str, EventHandler]:
    """Every client event of *cls*: event name -> :class:`EventHandler`; TypeError on conflicts."""
    raw_acks = bool(cls.raw_acks)
    table: dict[str, EventHandler] = {}
    problems: list[str] = []
    for attr in dir(cls):
        try:
            value = inspect.getattr_static(cls, attr)
        except AttributeError:
            continue
        if isinstance(value, (staticmethod, classmethod)):
            if getattr(value.__func__, "_sbio_events", None) or (
                    attr.startswith("on_") and attr not in RESERVED_HANDLERS):
                problems.append(f"{attr} is a {type(value).__name__}")
            continue
        if not inspect.isfunction(value):
            continue
        marks = getattr(value, "_sbio_events", None)
        if marks:
            if attr in RESERVED_HANDLERS:
                problems.append(f"{attr} is a lifecycle hook, it cannot handle events")
                continue
            entries = [EventHandler(name, name, attr, value, raw_acks if raw is None else raw)
                       for name, raw in marks]
        elif attr.startswith("on_") and attr not in RESERVED_HANDLERS:
            name = attr[3:]
            if EVENT_NAME_RE.match(name) is None:
                continue  # on__private, on_: never events
            if name in RESERVED_EVENT_NAMES:
                problems.append(f"{attr}: {name!r} is reserved by socket.io and its clients "
                                "cannot emit it (rename the method)")
                continue
            entries = [EventHandler(name, attr, attr, value, raw_acks)]
        else:
            continue
        if inspect.iscoroutinefunction(value):
            problems.append(f"{attr} is 'async def' (handlers run in greenlets: use def)")
            continue
        for entry in entries:
            other = table.get(entry.event)
            if other is not None:
                problems.append(f"event {entry.event!r} is handled by both {other.attr} "
                                f"and {entry.attr}")
            table[entry.event] = entry
    acl_names: dict[str, str] = {}
    for entry in table.values():
        other_event = acl_names.setdefault(entry.acl_name, entry.event)
        if other_event != entry.event:
            problems.append(f"events {other_event!r} and {entry.event!r} would share the ACL "
                            f"name {entry.acl_name!r}")
    if problems:
        raise TypeError(f"{cls.__qualname__}: handlers must be plain methods with one event "
                        "name each: " + "; ".join(problems))
    return table


class Namespace:
    """Base class of sbio namespaces; subclass it and set :attr:`name`.

    Attributes available on every instance (set before ``on_connect`` runs):

    ``sid``
        this connection's socket.io session id in this namespace.
    ``namespace``
        the namespace name, e.g. ``"/chat"``.
    ``environ``
        the WSGI environ of the request that opened the connection.
    ``session``
        a dict private to this (connection, namespace) instance.
    ``connection_session``
        a dict shared by every namespace instance of the same underlying
        connection (the same Engine.IO socket).
    ``server``
        the :class:`sbio.Server` hosting the namespace.
    ``allowed_methods``
        ``None`` (every handler allowed) or a ``set`` of handler names.
    ``jobs``
        a :class:`gevent.pool.Group` of greenlets started with :meth:`spawn`;
        they are killed when the connection goes away.
    """

    #: The socket.io namespace this class serves, e.g. ``"/chat"``.
    name: str | None = None

    #: True: every handler acks its return value as plain socket.io does (a
    #: tuple is several ack arguments, None none), not in sbio's envelope;
    #: ``@event(name, raw=False)`` keeps the envelope for one handler.
    raw_acks: ClassVar[bool] = False


    #: Run ``on_connect``, handlers, ``on_disconnect``, live-data re-runs and
    #: :meth:`spawn`\ ed jobs inside a Flask request context made from the
    #: connection's handshake (``flask.request``, ``flask.session``,
    #: ``flask.g``, Flask-Login's ``current_user``; see docs/namespaces.md).
    #: False skips it (a few µs less per call) for a namespace that never
    #: touches Flask.
    flask_context: ClassVar[bool] = True

    # the ACL names of one class's handlers, cached on it by handler_names()
    _sbio_handler_names: ClassVar[frozenset[str]]

    def __init__(self, server: Any, sid: str, environ: dict[str, Any],
                 session: dict[str, Any] | None = None,
                 connection_session: dict[str, Any] | None = None) -> None:
        self.server = server
        self.sid = sid
        self.environ = environ
        self.namespace = type(self).name
        self.session = {} if session is None else session
        self.connection_session = {} if connection_session is None else connection_session
        self.jobs = Group()
        self.allowed_methods: set[str] | None = None
        self.connected = False
        # greenlets running handler calls (killed at disconnect)
        self._sbio_calls: set[greenlet.greenlet] = set()
        self._sbio_guard: Any = None   # the connection's sbio.limits.ConnectionGuard
        self._sbio_connecting: Any = None  # the greenlet running on_connect, while it runs
        # the connection's flask.ctx.RequestContext (sbio.flask_context), set at connect
        self._sbio_request_ctx: Any = None
        self.reset_acl()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.namespace} sid={self.sid}>"

    @property
    def subscription(self) -> Any:
        """The :class:`sbio.live.Subscription` being computed, or None.

        Set while a ``@subscribes`` handler runs for a subscription (its first
        result or a re-run); ``self.subscription.data`` is a dict kept across
        the re-runs of that one subscription.
        """
        ctx = current_call()
        if ctx is None or ctx.namespace is not self:
            return None
        return ctx.subscription

    # -- hooks ---------------------------------------------------------------

    def on_connect(self, auth: Any) -> bool | None:
        """Called when a client connects; *auth* is the client's auth payload or None.

        Raise :class:`sbio.ConnectionRefused` (or return ``False``) to refuse
        the connection. The default accepts everyone.
        """

    def on_disconnect(self, reason: str) -> None:
        """Called once when the connection to this namespace ends, with socket.io's reason."""

    def exception_handler_decorator(self, fn: _F) -> _F:
        """Wrap every handler call and every :meth:`spawn`\\ ed function.

        Override to add cross-cutting error handling (e.g. rolling back a
        database session). Return a callable with the same signature. The
        default returns *fn* unchanged; exceptions the wrapper lets through
        are turned into ``internal`` errors (or ``RpcError`` codes) by sbio.
        """
        return fn

    # -- ACL (names follow gevent-socketio's BaseNamespace) ------------------

    def get_initial_acl(self) -> Iterable[str] | str | None:
        """Return the handler names allowed when the connection starts.

        ``None`` (the default) allows every handler; any iterable of names
        (``["on_login"]``) restricts the connection to those until
        :meth:`lift_acl_restrictions` or :meth:`add_acl_method` widen it. A
        handler registered with :func:`event` is named by its event name
        (``["on_login", "log in"]``).
        """
        return None

    def reset_acl(self) -> None:
        """Restore the ACL to :meth:`get_initial_acl`."""
        initial = self.get_initial_acl()
        if initial is None:
            self.allowed_methods = None
        elif isinstance(initial, str):
            self.allowed_methods = {initial}
        else:
            self.allowed_methods = set(initial)

    def lift_acl_restrictions(self) -> None:
        """Allow every handler on this connection."""
        self.allowed_methods = None

    def add_acl_method(self, method_name: str) -> None:
        """Allow *method_name* (e.g. ``"on_whoami"``). A no-op when everything is allowed."""
        if self.allowed_methods is not None:
            self.allowed_methods.add(method_name)

    def del_acl_method(self, method_name: str) -> None:
        """Forbid *method_name*; every other handler keeps its current access.

        On an unrestricted ACL this forbids only *method_name*: the ACL
        becomes "every handler of the class but this one". Removing a name
        that is not allowed is not an error.
        """
        if self.allowed_methods is None:
            self.allowed_methods = set(type(self).handler_names())
        self.allowed_methods.discard(method_name)

    def is_method_allowed(self, method_name: str) -> bool:
        """True when the ACL lets this connection call *method_name*."""
        allowed = self.allowed_methods
        return allowed is None or method_name in allowed

    @classmethod
    def event_handlers(cls) -> Mapping[str, EventHandler]:
        """Every client event of the class: event name -> :class:`EventHandler`.

        Made from its ``on_<event>`` methods (``<event>``: letters, digits
        and ``_``, starting with a letter) and the methods marked with
        :func:`event`, each time it is asked (a dispatcher asks once, when
        the class is added to a server). Raises ``TypeError`` for handlers
        that cannot be dispatched (static or class methods, ``async def``,
        one event name handled twice).
        """
        return _handler_table(cls)

    @classmethod
    def handler_function(cls, method_name: str) -> Callable[..., Any] | None:
        """The plain function of the handler the ACL knows as *method_name*, or None.

        *method_name* is an ACL name: ``"on_login"``, or the event name of a
        handler registered with :func:`event`.
        """
        for entry in cls.event_handlers().values():
            if entry.acl_name == method_name:
                return entry.func
        return None

    @classmethod
    def handler_names(cls) -> frozenset[str]:
        """The ACL names of every client-callable handler of the class.

        ``"on_<event>"`` for the ``on_*`` methods, the event name for the
        handlers registered with :func:`event`.
        """
        names = cls.__dict__.get("_sbio_handler_names")
        if names is None:
            names = frozenset(entry.acl_name for entry in cls.event_handlers().values())
            cls._sbio_handler_names = names
        return names

    # -- talking to clients ----------------------------------------------------
    # emit, broadcast, send, disconnect and the rooms are safe from any OS
    # thread: from another thread than the server's hub they are handed to
    # the hub (Server._run_in_hub), in order, and return at once.

    def emit(self, event: str, *args: Any, to: Any = None) -> None:
        """Send *event* with *args* to this connection, or to *to* (a sid, a room or a list)."""
        server = self.server
        handoff = server._handoff
        if handoff is None or _thread_ident() == handoff.thread_ident:  # the common case
            server.sio.emit(event, args, to=self.sid if to is None else to,
                            namespace=self.namespace)
        else:
            server._run_in_hub(server.sio.emit, event, args,
                               to=self.sid if to is None else to, namespace=self.namespace)

    def broadcast(self, event: str, *args: Any, room: Any = None,
                  include_self: bool = True) -> None:
        """Send *event* to every connection of the namespace, or of *room*.

        :param include_self: False leaves this connection out.
        """
        server = self.server
        handoff = server._handoff
        skip_sid = None if include_self else self.sid
        if handoff is None or _thread_ident() == handoff.thread_ident:  # the common case
            server.sio.emit(event, args, to=room, namespace=self.namespace, skip_sid=skip_sid)
        else:
            server._run_in_hub(server.sio.emit, event, args, to=room, namespace=self.namespace,
                               skip_sid=skip_sid)

    def send(self, data: Any, to: Any = None) -> None:
        """Send a socket.io ``message`` event (the client's ``on("message")``)."""
        self.emit("message", data, to=to)

    def call(self, event: str, *args: Any, timeout: float = 10) -> Any:
        """Emit *event* to this client and wait for its acknowledgement.

        Returns the client's ack value (a single value, or a tuple when the
        client acked with several). Raises :class:`sbio.SbioTimeoutError`
        after *timeout* seconds. Not from ``on_connect`` itself (the client
        gets events only once the connection is accepted: :meth:`spawn` a
        greenlet that calls) and not from another OS thread than the server's.
        """
        import socketio.exceptions

        if self._sbio_connecting is not None and self._sbio_connecting is gevent.getcurrent():
            raise SbioError(f"{type(self).__name__}.call({event!r}) in on_connect: the client "
                            "gets events only after on_connect returns; spawn() a greenlet "
                            "that makes the call")
        if not self.server._in_hub_thread():
            raise SbioError(f"{type(self).__name__}.call({event!r}) from another OS thread than "
                            "the server's: call() waits for the client, which only the "
                            "server's thread can do (emit() is safe from any thread)")
        try:
            result = self.server.sio.call(event, args, to=self.sid,
                                          namespace=self.namespace, timeout=timeout)
        except socketio.exceptions.TimeoutError:
            raise SbioTimeoutError(
                f"client {self.sid} did not acknowledge {event!r} within {timeout}s") from None
        return result

    def error(self, code: str, message: str, event: str | None = None) -> None:
        """Push an ``sbio:error`` event ``{"event", "code", "message"}`` to this connection."""
        self.emit("sbio:error", {"event": event, "code": code, "message": message})

    def disconnect(self) -> None:
        """Close this connection to the namespace (``on_disconnect`` runs)."""
        server = self.server
        server._run_in_hub(server.sio.disconnect, self.sid, namespace=self.namespace)

    # -- rooms -------------------------------------------------------------------

    def enter_room(self, room: str) -> None:
        """Add this connection to *room* (see :meth:`broadcast` and ``emit(to=room)``)."""
        server = self.server
        server._run_in_hub(server.sio.enter_room, self.sid, room, namespace=self.namespace)

    def leave_room(self, room: str) -> None:
        """Remove this connection from *room*."""
        server = self.server
        server._run_in_hub(server.sio.leave_room, self.sid, room, namespace=self.namespace)

    def rooms(self) -> list[str]:
        """The rooms this connection is in (its own sid room included)."""
        return self.server.sio.rooms(self.sid, namespace=self.namespace)

    # -- live data ---------------------------------------------------------------

    def unsubscribe_all(self) -> int:
        """End every live-data subscription of this connection in this namespace.

        No ``sbio:update`` reaches the connection any more until its client
        subscribes again (sbio.js: ``conn.resubscribe()``), e.g. after a
        logout. The client is not told; its rooms and ACL are untouched.
        Returns how many subscriptions ended.
        """
        ended: int = self.server.live.unsubscribe_all(self.namespace, self.sid)
        return ended

    # -- greenlets ---------------------------------------------------------------

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
        """Run ``fn(*args, **kwargs)`` in a greenlet owned by this connection.

        The greenlet is killed when the connection ends (or by
        :meth:`kill_local_jobs`). An exception it raises is logged with the
        sid and namespace, never printed. It runs in the connection's Flask
        request context, as handlers do (see :attr:`flask_context`).
        """
        wrapped = self.exception_handler_decorator(fn)

        def run() -> Any:
            try:
                return call_in(self._sbio_request_ctx, wrapped, *args, **kwargs)
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("spawned job %r failed (sid=%s namespace=%s)",
                              getattr(fn, "__name__", fn), self.sid, self.namespace)

        return self.jobs.spawn(run)

    def kill_local_jobs(self, timeout: float = 5) -> None:
        """Kill every greenlet started with :meth:`spawn` (waits up to *timeout* s)."""
        self.jobs.kill(block=True, timeout=timeout)
