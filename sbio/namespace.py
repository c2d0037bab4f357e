"""The :class:`Namespace` base class: one instance per (connection, namespace).

python-socketio's class-based namespaces are singletons shared by every
client. sbio instead creates one instance of your subclass for each
connection to the namespace (see :mod:`sbio.dispatch`), so connection state
lives on ``self``: ``self.session``, the ACL, spawned greenlets.

Handlers are methods named ``on_<event>``. A client emitting ``login`` with
an ack runs ``on_login`` and receives ``{"ok": true, "data": <return value>}``
or ``{"ok": false, "error": {"code": ..., "message": ...}}``.
"""
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import gevent
import greenlet
from gevent.pool import Group

from .context import current_call
from .errors import SbioTimeoutError

__all__ = ["Namespace"]

log = logging.getLogger(__name__)

#: Methods named ``on_*`` that are lifecycle hooks, never client events.
_F = TypeVar("_F", bound=Callable[..., Any])

RESERVED_HANDLERS = frozenset({"on_connect", "on_disconnect", "on_startup", "on_shutdown"})


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

    # the handler names of one class, cached on it by handler_names()
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
        :meth:`lift_acl_restrictions` or :meth:`add_acl_method` widen it.
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
    def handler_function(cls, method_name: str) -> Callable[..., Any] | None:
        """The plain function behind handler *method_name*, or None if it is not one.

        A handler is a regular method named ``on_<event>`` (not a lifecycle
        hook, not a static or class method, not ``async def``).
        """
        if not method_name.startswith("on_") or method_name in RESERVED_HANDLERS:
            return None
        try:
            raw = inspect.getattr_static(cls, method_name)
        except AttributeError:
            return None
        if not inspect.isfunction(raw) or inspect.iscoroutinefunction(raw):
            return None
        return raw

    @classmethod
    def handler_names(cls) -> frozenset[str]:
        """The names of every client-callable handler (``on_*``) of the class."""
        names = cls.__dict__.get("_sbio_handler_names")
        if names is None:
            names = frozenset(attr for attr in dir(cls)
                              if cls.handler_function(attr) is not None)
            cls._sbio_handler_names = names
        return names

    # -- talking to clients ----------------------------------------------------

    def emit(self, event: str, *args: Any, to: Any = None) -> None:
        """Send *event* with *args* to this connection, or to *to* (a sid, a room or a list)."""
        self.server.sio.emit(event, args, to=self.sid if to is None else to,
                             namespace=self.namespace)

    def broadcast(self, event: str, *args: Any, room: Any = None,
                  include_self: bool = True) -> None:
        """Send *event* to every connection of the namespace, or of *room*.

        :param include_self: False leaves this connection out.
        """
        self.server.sio.emit(event, args, to=room, namespace=self.namespace,
                             skip_sid=None if include_self else self.sid)

    def send(self, data: Any, to: Any = None) -> None:
        """Send a socket.io ``message`` event (the client's ``on("message")``)."""
        self.emit("message", data, to=to)

    def call(self, event: str, *args: Any, timeout: float = 10) -> Any:
        """Emit *event* to this client and wait for its acknowledgement.

        Returns the client's ack value (a single value, or a tuple when the
        client acked with several). Raises :class:`sbio.SbioTimeoutError`
        after *timeout* seconds.
        """
        import socketio.exceptions

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
        self.server.sio.disconnect(self.sid, namespace=self.namespace)

    # -- rooms -------------------------------------------------------------------

    def enter_room(self, room: str) -> None:
        """Add this connection to *room* (see :meth:`broadcast` and ``emit(to=room)``)."""
        self.server.sio.enter_room(self.sid, room, namespace=self.namespace)

    def leave_room(self, room: str) -> None:
        """Remove this connection from *room*."""
        self.server.sio.leave_room(self.sid, room, namespace=self.namespace)

    def rooms(self) -> list[str]:
        """The rooms this connection is in (its own sid room included)."""
        return self.server.sio.rooms(self.sid, namespace=self.namespace)

    # -- greenlets ---------------------------------------------------------------

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
        """Run ``fn(*args, **kwargs)`` in a greenlet owned by this connection.

        The greenlet is killed when the connection ends (or by
        :meth:`kill_local_jobs`). An exception it raises is logged with the
        sid and namespace, never printed.
        """
        wrapped = self.exception_handler_decorator(fn)

        def run() -> Any:
            try:
                return wrapped(*args, **kwargs)
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("spawned job %r failed (sid=%s namespace=%s)",
                              getattr(fn, "__name__", fn), self.sid, self.namespace)

        return self.jobs.spawn(run)

    def kill_local_jobs(self, timeout: float = 5) -> None:
        """Kill every greenlet started with :meth:`spawn` (waits up to *timeout* s)."""
        self.jobs.kill(block=True, timeout=timeout)
