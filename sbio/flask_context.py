"""Flask contexts for the code sbio runs: handlers, connect, disconnect, re-runs, tasks.

Every connection to a namespace gets a Flask request context, made at
connect from the environ of the connection's handshake request
(:func:`connection_context`): it holds the :class:`flask.Request` (headers,
cookies, remote address) and the session, opened once from the handshake's
session cookie by the app's session interface. ``on_connect`` runs inside
it; every later call of that connection (a handler, ``on_disconnect``, a
live-data re-run, a ``spawn``\\ ed job) runs inside a request context of the
same request and session (:func:`call_in`). Each push makes a new app
context, so each call has a ``flask.g`` of its own, as each HTTP request
has, and the teardown functions (``teardown_request``,
``teardown_appcontext``) run after it. A change to ``flask.session`` lasts
as long as the connection and is never written back to the cookie.

The cost is kept down (see :class:`ConnectionContexts`): the URL is matched
once per connection, and a call pushes a context object an earlier call of
the connection pushed and popped, instead of making one (which builds a URL
adapter). Flask's API is used as documented, the same from Flask 2.3
(sbio's floor) to 3.1: ``RequestContext.copy`` (Flask's way to carry a
request into another greenlet), ``push``/``pop`` through ``with`` (a popped
context can be pushed again), and one override, of
``RequestContext.match_request`` ("can be overridden by a subclass").
A context object is never pushed twice at once: calls of one connection may
run concurrently in several greenlets, and Flask's context keeps the tokens
of its pushes on itself.
"""
import io
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from flask.ctx import RequestContext

__all__ = ["ConnectionRequestContext", "ConnectionContexts", "connection_context", "open_in",
           "call_in"]

_T = TypeVar("_T")


class ConnectionRequestContext(RequestContext):
    """The request context of one connection (and of its copies): matched once.

    The request, shared by the copies, keeps ``url_rule``, ``view_args`` and
    ``routing_exception`` from the first match (at connect); the copies skip
    matching again. ``url_for`` works as in any request context.
    """

    def match_request(self) -> None:
        request = self.request
        if request.url_rule is None and request.routing_exception is None:
            super().match_request()


class ConnectionContexts:
    """The request contexts of one connection: *base*, and the idle ones to push again.

    A call takes an idle context (or makes a copy of *base* when every one
    is in use) and gives it back when it returns, unless the call left
    something on it that must not reach the next call: flashed messages it
    read (``flashes``), functions it registered with ``after_this_request``
    (read from Flask's ``_after_request_functions``; a Flask without that
    attribute never gets a context back, so each call makes its own). At
    most :attr:`max_idle` are kept.
    """

    __slots__ = ("base", "idle")

    #: Idle contexts kept per connection (one per call running at once, up to this).
    max_idle = 4

    def __init__(self, base: ConnectionRequestContext) -> None:
        self.base = base
        self.idle: list[RequestContext] = []

    def take(self) -> RequestContext:
        idle = self.idle
        return idle.pop() if idle else self.base.copy()

    def give_back(self, ctx: RequestContext) -> None:
        if ctx.flashes is None and getattr(ctx, "_after_request_functions", None) == [] \
                and len(self.idle) < self.max_idle:
            self.idle.append(ctx)


def connection_context(app: Flask, environ: dict[str, Any], sid: str,
                       namespace: str) -> ConnectionContexts:
    """The request contexts of *app* for one connection, from its handshake *environ*.

    The context's request reads a copy of *environ* whose body is empty: the
    handshake request is over (its input stream belongs to the socket, which
    now carries the websocket or the next request of a keep-alive
    connection), so ``request.get_data()`` must not read from it. The request
    also carries ``request.sid`` and ``request.namespace`` (the names
    Flask-SocketIO gives them).
    """
    safe = dict(environ)
    safe["wsgi.input"] = io.BytesIO(b"")
    safe["CONTENT_LENGTH"] = "0"
    ctx = ConnectionRequestContext(app, safe)  # what app.request_context(safe) makes
    request = ctx.request
    request.sid = sid  # type: ignore[attr-defined]  # Flask-SocketIO's names
    request.namespace = namespace  # type: ignore[attr-defined]
    return ConnectionContexts(ctx)


def open_in(contexts: ConnectionContexts | None, func: Callable[..., _T], /,
            *args: Any) -> _T:
    """``func(*args)`` inside the connection's first context, which opens the session.

    For ``on_connect``: run once per connection, before any :func:`call_in`;
    the later contexts share the session opened here. Without *contexts* it
    is a plain call.
    """
    if contexts is None:
        return func(*args)
    with contexts.base:
        result = func(*args)
    contexts.give_back(contexts.base)
    return result


def call_in(contexts: ConnectionContexts | None, func: Callable[..., _T], /, *args: Any,
            **kwargs: Any) -> _T:
    """``func(*args, **kwargs)`` inside a request context of the connection.

    Without *contexts* (a namespace with ``flask_context = False``) it is a
    plain call. An exception from *func* reaches the teardown functions, as
    in a Flask view, and is raised on (that context is not used again).
    """
    if contexts is None:
        return func(*args, **kwargs)
    ctx = contexts.take()
    with ctx:
        result = func(*args, **kwargs)
    contexts.give_back(ctx)
    return result
