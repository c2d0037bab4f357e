"""Flask contexts for the code sbio runs: handlers, connect, disconnect, re-runs, tasks.

Every connection to a namespace gets one Flask request context, made at
connect from the environ of the connection's handshake request
(:func:`connection_context`): it holds the :class:`flask.Request` (headers,
cookies, remote address) and the session, opened once from the handshake's
session cookie by the app's session interface. ``on_connect`` runs inside
it; every later call of that connection (a handler, ``on_disconnect``, a
live-data re-run, a ``spawn``\\ ed job) runs inside a copy of it
(:func:`call_in`), Flask's own way (:meth:`flask.ctx.RequestContext.copy`)
to carry one request into another greenlet. So each call has an app context
and a ``flask.g`` of its own, as each HTTP request has, and the teardown
functions (``teardown_request``, ``teardown_appcontext``) run after it, while
the request and the session are those of the connection: a change to
``flask.session`` lasts as long as the connection and is never written back
to the cookie.

Only public Flask API is used (``Flask.request_context``,
``RequestContext.copy``, ``push``/``pop`` through ``with``), which behaves
the same from Flask 2.3 (sbio's floor) to 3.1. A context object is not
pushed twice at once: calls of one connection may run concurrently in
several greenlets, and Flask's context keeps the tokens of its pushes on
itself, so each call pushes its own copy.
"""
import io
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from flask.ctx import RequestContext

__all__ = ["connection_context", "open_in", "call_in"]

_T = TypeVar("_T")


def connection_context(app: Flask, environ: dict[str, Any], sid: str,
                       namespace: str) -> RequestContext:
    """A request context of *app* for one connection, made from its handshake *environ*.

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
    ctx = app.request_context(safe)
    request = ctx.request
    request.sid = sid  # type: ignore[attr-defined]  # Flask-SocketIO's names
    request.namespace = namespace  # type: ignore[attr-defined]
    return ctx


def open_in(base: RequestContext | None, func: Callable[..., _T], /, *args: Any) -> _T:
    """``func(*args)`` inside *base* itself, which opens its session (``on_connect``).

    Run once per connection, before any :func:`call_in`: the copies share
    the session opened here. Without a *base* it is a plain call.
    """
    if base is None:
        return func(*args)
    with base:
        return func(*args)


def call_in(base: RequestContext | None, func: Callable[..., _T], /, *args: Any,
            **kwargs: Any) -> _T:
    """``func(*args, **kwargs)`` inside a copy of the connection's request context *base*.

    Without a *base* (a namespace with ``flask_context = False``) it is a
    plain call. An exception from *func* reaches the teardown functions, as
    in a Flask view, and is raised on.
    """
    if base is None:
        return func(*args, **kwargs)
    with base.copy():
        return func(*args, **kwargs)
