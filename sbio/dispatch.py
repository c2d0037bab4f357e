"""Per-connection dispatch: sbio's own routing of connections and events.

python-socketio's class-based namespaces are singletons; sbio gives every
connection its own :class:`~sbio.Namespace` instance. A
:class:`NamespaceDispatcher` per namespace does that bookkeeping:

* connect: creates an instance of the user's :class:`~sbio.Namespace`
  subclass and runs ``on_connect`` — a refusal or a crash always answers the
  client (python-socketio would leave it hanging);
* events: :meth:`NamespaceDispatcher.handle_event` finds the handler of the
  event name (one dict lookup: the class's ``on_*`` methods and
  ``@sbio.event`` names), checks the ACL, checks the arguments, runs the
  handler and returns the envelope of the wire protocol (``docs/protocol.md``);
  :meth:`NamespaceDispatcher.ack_args` makes the ack of it (the envelope, or
  a raw handler's own values).

``on_connect``, handlers and ``on_disconnect`` run inside the connection's
Flask request context (:mod:`sbio.flask_context`).

It is plain Python: the glue to python-socketio's packet handling (which
calls into this module) is :class:`sbio.adapter.SocketIOServer`.
"""
import inspect
import logging
import typing

import gevent
import socketio

from .context import CallContext, _current_call, current_call
from .errors import ConnectionRefused, RpcError, SbioTimeoutError
from .flask_context import call_in, connection_context, open_in
from .protocol import ERROR_EVENT as ERROR_EVENT  # re-exported: its old location
from .protocol import (
    EVENT_NAME_RE,
    RATE_LIMITED,
    SBIO_EVENT_PREFIX,
    error_envelope,
    error_envelope_of,
    event_name_problem,
    ok_envelope,
    raw_ack_args,
    short_repr,
)

__all__ = ["NamespaceDispatcher", "CallContext", "current_call",
           "ok_envelope", "error_envelope"]

log = logging.getLogger(__name__)

_SIMPLE_TYPES = (int, float, str, bool, list, dict)

# Old names, kept for code that imported them from here.
_EVENT_NAME = EVENT_NAME_RE
_short = short_repr


class _HandlerSpec:
    """What dispatch needs to know of one event's handler, computed once per class.

    *entry* is the class's :class:`sbio.namespace.EventHandler`: ``acl_name``
    is what the ACL is asked, ``raw`` whether the ack is the return value as
    it is.
    """

    __slots__ = ("func", "min_args", "max_args", "checks", "params", "acl_name", "attr", "raw")

    def __init__(self, entry):
        func = self.func = entry.func
        self.acl_name = entry.acl_name
        self.attr = entry.attr
        self.raw = entry.raw
        sig = inspect.signature(func)
        params = list(sig.parameters.values())[1:]  # drop self
        positional = [p for p in params
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.params = [p.name for p in positional]
        self.min_args = sum(1 for p in positional if p.default is p.empty)
        varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
        self.max_args = None if varargs else len(positional)
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # unresolvable annotations: no type checks
            hints = {}
        self.checks = tuple(
            (index, p.name, hints[p.name], p.default is None)
            for index, p in enumerate(positional)
            if hints.get(p.name) in _SIMPLE_TYPES
        )

    def check_args(self, event, args):
        """None when *args* fit the handler, else the bad_request message."""
        count = len(args)
        if count < self.min_args or (self.max_args is not None and count > self.max_args):
            if self.max_args is None:
                wanted = f"at least {self.min_args}"
            elif self.min_args == self.max_args:
                wanted = str(self.max_args)
            else:
                wanted = f"{self.min_args} to {self.max_args}"
            names = ", ".join(self.params)
            return (f"event {_short(event)} takes {wanted} argument(s) ({names}), "
                    f"got {count}")
        for index, name, kind, none_ok in self.checks:
            if index >= count:
                break
            value = args[index]
            if value is None and none_ok:
                continue
            if kind is float:
                good = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif kind is int:
                good = isinstance(value, int) and not isinstance(value, bool)
            else:
                good = isinstance(value, kind)
            if not good:
                return (f"argument {name!r} of event {_short(event)} must be "
                        f"{kind.__name__}, got {type(value).__name__}")
        return None


class NamespaceDispatcher:
    """Routes one namespace's connections and events to per-sid instances of *cls*."""

    def __init__(self, server, cls):
        self.server = server
        self.cls = cls
        self.name = cls.name
        #: sid -> live Namespace instance.
        self.instances = {}
        #: event name -> callable(instance, args) -> envelope, for ``sbio:*`` events.
        self.internal_events = {}
        #: callables(instance, reason) run when a connection ends (before on_disconnect).
        self.disconnect_hooks = []
        #: callables(instance, event, exc) told of every exception a handler raised
        #: that became an ``internal`` error (the test client uses this).
        self.error_hooks = []
        #: event name -> _HandlerSpec: every client event of the class (raises
        #: TypeError for handlers that cannot be dispatched)
        self.handlers = {event: _HandlerSpec(entry)
                         for event, entry in cls.event_handlers().items()}
        #: the ack of an event without a handler is raw (Namespace.raw_acks)
        self.raw_acks = bool(cls.raw_acks)
        #: handler calls of one connection running at once (``server.max_calls_in_flight``)
        self.max_calls_in_flight = int(server.config["server"]["max_calls_in_flight"])
        #: event -> (per_second, burst) of the handlers marked ``@rate_limit``
        self.rate_limits = {event: spec.func._sbio_rate_limit
                            for event, spec in self.handlers.items()
                            if hasattr(spec.func, "_sbio_rate_limit")}
        self._decorated = (cls.exception_handler_decorator
                           is not _base_exception_handler_decorator())

    # -- connect / disconnect ------------------------------------------------------

    def connect(self, sid, environ, auth=None):
        """Create the instance for *sid* and run ``on_connect``; refuse on failure."""
        sio = self.server.sio
        eio_sid = sio.manager.eio_sid_from_sid(sid, self.name)
        instance = self.cls(self.server, sid, environ,
                            connection_session=self.server._connection_session(eio_sid))
        instance._sbio_guard = sio.connection_guard(eio_sid)
        if self.cls.flask_context:
            instance._sbio_request_ctx = connection_context(self.server.flask_app, environ,
                                                            sid, self.name)
        self.instances[sid] = instance
        instance._sbio_connecting = gevent.getcurrent()
        try:
            accepted = open_in(instance._sbio_request_ctx, instance.on_connect, auth)
        except ConnectionRefused as exc:
            self._forget(sid, instance)
            log.info("connection refused (sid=%s namespace=%s): %s", sid, self.name, exc.message)
            if exc.data is None:
                raise socketio.exceptions.ConnectionRefusedError(exc.message) from None
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.data) from None
        except Exception:
            self._forget(sid, instance)
            log.exception("on_connect failed (sid=%s namespace=%s)", sid, self.name)
            raise socketio.exceptions.ConnectionRefusedError("Internal server error") from None
        finally:
            instance._sbio_connecting = None
        if accepted is False:
            self._forget(sid, instance)
            log.info("connection refused by on_connect (sid=%s namespace=%s)", sid, self.name)
            return False
        instance.connected = True
        self.server.access_log.connected(instance)
        return True

    def _forget(self, sid, instance):
        """Drop a refused connection's instance and whatever on_connect spawned."""
        self.instances.pop(sid, None)
        instance.jobs.kill(block=False)

    def disconnect(self, sid, reason=None):
        """Drop *sid*'s instance: hooks, ``on_disconnect``, kill its greenlets."""
        instance = self.instances.pop(sid, None)
        if instance is None:
            return
        instance.connected = False
        for hook in self.disconnect_hooks:
            try:
                hook(instance, reason)
            except Exception:
                log.exception("disconnect hook %r failed (sid=%s namespace=%s)",
                              hook, sid, self.name)
        try:
            call_in(instance._sbio_request_ctx, instance.on_disconnect, reason)
        except Exception:
            log.exception("on_disconnect failed (sid=%s namespace=%s)", sid, self.name)
        self.server.access_log.disconnected(instance, reason)
        # Not blocking: the disconnect may come from one of these very jobs.
        instance.jobs.kill(block=False)
        self._end_calls(instance)

    @staticmethod
    def _end_calls(instance):
        """Kill the handler calls still running for *instance* (GreenletExit: rollbacks run)."""
        calls = instance._sbio_calls
        if calls:
            current = gevent.getcurrent()  # a handler that disconnects its own connection
            gevent.killall([g for g in calls if g is not current], block=False)
            calls.clear()

    # -- limits --------------------------------------------------------------------

    def admit(self, instance, event, guard):
        """None when *event* may run now for *instance*, else the ``rate_limited`` error.

        Checked before a greenlet is spawned for the call: the calls in flight
        of this connection (``server.max_calls_in_flight``), its token bucket
        (``server.rate_limit``) and the handler's own (:func:`sbio.rate_limit`).
        """
        if len(instance._sbio_calls) >= self.max_calls_in_flight:
            return {"code": RATE_LIMITED, "message": "too many calls in flight on this "
                    f"connection (limit {self.max_calls_in_flight}): wait for answers first"}
        bucket = guard.bucket
        if bucket is not None and not bucket.take():
            limits = guard.limits
            return {"code": RATE_LIMITED, "message": "too many events on this connection "
                    f"(limit {limits.rate:g}/s, burst {limits.burst})"}
        if self.rate_limits:
            return self.admit_handler(instance, event, guard)
        return None

    def admit_handler(self, instance, event, guard=None):
        """None, or the ``rate_limited`` error of *event*'s own :func:`sbio.rate_limit`.

        A subscription (``sbio:subscribe``) to a rate-limited handler runs it,
        so it takes from the same bucket as a call.
        """
        spec = self.rate_limits.get(event)
        guard = guard or instance._sbio_guard
        if spec is None or guard is None:
            return None
        if guard.handler_bucket(self.name, event, spec).take():
            return None
        return {"code": RATE_LIMITED, "message": f"too many calls of {_short(event)} "
                f"(limit {spec[0]:g}/s, burst {spec[1]})"}

    # -- events --------------------------------------------------------------------

    def handle_event(self, sid, event, args):
        """Run one inbound event; return the envelope to ack (never raises)."""
        instance = self.instances.get(sid)
        if instance is None:
            return error_envelope("bad_request", "not connected to this namespace")
        if type(event) is not str:
            return error_envelope("bad_request", "event name must be a string")
        internal = self.internal_events.get(event)
        if internal is not None:
            return internal(instance, args)
        return self.call_handler(instance, event, args)

    def handler(self, event):
        """The :class:`_HandlerSpec` of *event*, or None when the class has no handler for it."""
        return self.handlers.get(event)

    def acl_name(self, event):
        """The name the ACL knows *event*'s handler by (``"on_<event>"`` or the event name)."""
        spec = self.handlers.get(event)
        if spec is not None:
            return spec.acl_name
        return "on_" + event if EVENT_NAME_RE.match(event) else event

    def ack_args(self, event, envelope):
        """The arguments of the ack answering *event* with *envelope*.

        ``[envelope]``, or for a raw handler (``@sbio.event(..., raw=True)``,
        ``raw_acks = True``) its return value as plain socket.io acks it (see
        :func:`sbio.protocol.raw_ack_args`). sbio's own events always ack
        the envelope.
        """
        spec = self.handlers.get(event) if type(event) is str else None
        if spec is not None:
            raw = spec.raw
        else:
            raw = self.raw_acks and not (type(event) is str
                                         and event.startswith(SBIO_EVENT_PREFIX))
        return raw_ack_args(envelope) if raw else [envelope]

    def _no_handler(self, instance, event):
        """The answer to *event*, which no handler of the class takes."""
        problem = event_name_problem(event)
        if problem is not None:
            return error_envelope("bad_request", f"invalid event name {_short(event)}: {problem}")
        # restricted connections learn nothing of which handlers exist
        if not instance.is_method_allowed(self.acl_name(event)):
            return error_envelope("forbidden", f"not allowed to call {_short(event)}")
        return error_envelope("not_found", f"no handler for event {_short(event)}")

    def call_handler(self, instance, event, args, purpose="call", subscription=None):
        """Run the handler of *event* for *instance* under its ACL; return the envelope.

        Used for client calls and by the live-data module (subscribe and
        re-runs, with the :class:`sbio.live.Subscription` being computed), so
        every path applies the same checks and error mapping.
        """
        spec = self.handlers.get(event)
        if spec is None:
            return self._no_handler(instance, event)
        if not instance.is_method_allowed(spec.acl_name):
            return error_envelope("forbidden", f"not allowed to call {_short(event)}")
        problem = spec.check_args(event, args)
        if problem is not None:
            return error_envelope("bad_request", problem)
        ctx = CallContext(instance, event, args, purpose, subscription)
        token = _current_call.set(ctx)
        try:
            if self._decorated:
                result = call_in(instance._sbio_request_ctx,
                                 instance.exception_handler_decorator(spec.func), instance, *args)
            else:
                result = call_in(instance._sbio_request_ctx, spec.func, instance, *args)
        except RpcError as exc:
            return error_envelope_of(exc.to_dict())
        except (SbioTimeoutError, gevent.Timeout) as exc:
            log_limited(instance, logging.WARNING, f"'handler timed out' ({_short(event)})",
                        "handler timed out (sid=%s namespace=%s event=%s): %s",
                        instance.sid, self.name, event, exc)
            return error_envelope("timeout", "the handler timed out")
        except Exception as exc:
            log_limited(instance, logging.ERROR, f"'handler failed' ({_short(event)})",
                        "handler failed (sid=%s namespace=%s event=%s)",
                        instance.sid, self.name, event, exc_info=True)
            for hook in self.error_hooks:
                hook(instance, event, exc)
            return error_envelope("internal", "internal server error")
        finally:
            ctx.finished = True
            _current_call.reset(token)
        for callback in ctx.after_success:
            try:
                callback()
            except Exception:
                log.exception("after-success callback failed (sid=%s namespace=%s event=%s)",
                              instance.sid, self.name, event)
        return ok_envelope(result)


def log_limited(instance, level, kind, msg, *args, exc_info=None):
    """Log *msg* through the log limiter of *instance*'s connection (once, then counted)."""
    guard = getattr(instance, "_sbio_guard", None)
    if guard is None:
        log.log(level, msg, *args, exc_info=exc_info)
    else:
        guard.log.log(log, level, kind, msg, *args, exc_info=exc_info)


def _base_exception_handler_decorator():
    from .namespace import Namespace
    return Namespace.exception_handler_decorator
