"""Operations: health checks, Prometheus metrics, the live status page, the socket.io Admin UI.

One :class:`Operations` per :class:`sbio.Server` (``server.ops``), built from
the ``[health]``, ``[metrics]`` and ``[admin]`` sections (docs/operations.md):

* ``/healthz`` and ``/readyz`` (:mod:`~sbio.ops.health`), on by default;
* ``/metrics`` (:mod:`~sbio.ops.metrics`) and the status page ``/sbio/status``
  (:mod:`~sbio.ops.status`) with ``metrics.enabled``, readable as
  ``metrics.access`` says (:mod:`~sbio.ops.access`);
* the socket.io Admin UI (:mod:`~sbio.ops.admin`) with ``admin.enabled``.

Its HTTP endpoints are answered by :meth:`Operations.route`, which the
server's WSGI application asks first: they work whatever Flask app serves
the pages. Building it does no I/O; :meth:`start` and :meth:`stop` follow the
server's.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent.event

from ..config import section_defaults
from ..errors import ConfigurationError
from .access import Access
from .health import readiness
from .status import STATUS_NAMESPACE, StatusNamespace, StatusSampler, page

__all__ = ["Operations", "Access", "readiness"]

log = logging.getLogger("sbio.ops")

#: the health checks' paths (``health.enabled``)
HEALTH_PATHS = ("/healthz", "/readyz")

_WSGIAnswer = Iterable[bytes]
_StartResponse = Callable[..., Any]


def _settings(config: Any, section: str) -> dict[str, Any]:
    """``[section]`` of *config*, the configspec's defaults for what it lacks."""
    settings = section_defaults(section)
    given = config.get(section) if hasattr(config, "get") else None
    settings.update({k: v for k, v in (given or {}).items() if k in settings})
    return settings


class Operations:
    """The operations side of one server: health, metrics, status page, Admin UI.

    :param server: the :class:`sbio.Server` (built: it has ``config``,
        ``sio`` and ``live``).
    :raises sbio.ConfigurationError: metrics enabled without prometheus_client,
        a token access without a token, the Admin UI without credentials
        outside debug.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        config = server.config
        self.health_settings = _settings(config, "health")
        self.metrics_settings = _settings(config, "metrics")
        self.admin_settings = _settings(config, "admin")
        #: seconds stop() keeps serving with /readyz at 503 (``health.drain_time``)
        self.drain_time = float(self.health_settings["drain_time"])
        self._drain_over = gevent.event.Event()
        #: who may read /metrics and /sbio/status (None: metrics disabled)
        self.access: Access | None = None
        #: the :class:`~sbio.ops.metrics.ServerMetrics` (None: metrics disabled)
        self.metrics: Any = None
        #: the status page's sampler (None: metrics disabled)
        self.sampler: StatusSampler | None = None
        #: the Admin UI instrumentation, once started (None: disabled)
        self.admin: Any = None
        self._admin_auth: Any = None
        self._routes: dict[str, Callable[[Mapping[str, Any], _StartResponse], _WSGIAnswer]] = {}
        if self.health_settings["enabled"]:
            self._routes["/healthz"] = self._healthz
            self._routes["/readyz"] = self._readyz
        if self.metrics_settings["enabled"]:
            from .metrics import ServerMetrics

            self.access = Access(self.metrics_settings)
            self.metrics = ServerMetrics(server, self.metrics_settings)
            self.sampler = StatusSampler(server, self.metrics_settings["status_interval"],
                                         self.metrics_settings["status_window"])
            self._routes["/metrics"] = self._scrape
            self._routes[STATUS_NAMESPACE] = self._status_page
            self._routes[STATUS_NAMESPACE + "/"] = self._status_page
            dispatcher = server.sio.add_namespace_class(StatusNamespace)
            server.live.add_dispatcher(dispatcher)
            self.add_dispatcher(dispatcher)
        if self.admin_settings["enabled"]:
            from .admin import admin_auth

            self._admin_auth = admin_auth(self.admin_settings, server.debug)

    def __repr__(self) -> str:
        return f"<Operations {sorted(self._routes)}>"

    @property
    def status_url(self) -> str | None:
        """The status page's path, or None when metrics are disabled."""
        return STATUS_NAMESPACE if self.sampler is not None else None

    def add_dispatcher(self, dispatcher: Any) -> None:
        """Count the events of a namespace the server added (with metrics enabled).

        :raises sbio.ConfigurationError: the namespace is the status page's
            or the Admin UI's.
        """
        name = dispatcher.name
        if self.sampler is not None and name == STATUS_NAMESPACE \
                and dispatcher.cls is not StatusNamespace:
            raise ConfigurationError(f"namespace {name} ({dispatcher.cls.__qualname__}) is "
                                     "sbio's status page while metrics.enabled is true: "
                                     "rename the namespace")
        if self._admin_auth is not None and name == self.admin_settings["namespace"]:
            raise ConfigurationError(f"namespace {name} ({dispatcher.cls.__qualname__}) is the "
                                     "socket.io Admin UI's (admin.namespace): rename one of them")
        if self.metrics is not None:
            self.metrics.add_dispatcher(dispatcher)

    # -- lifecycle (the server's) ---------------------------------------------------------

    def start(self) -> None:
        """Start the status sampler and the Admin UI (at the server's start)."""
        self._drain_over.clear()
        self._yield_to_app()
        if self.sampler is not None:
            self.sampler.start()
        if self._admin_auth is not None and self.admin is None:
            from .admin import instrument

            self.admin = instrument(self.server, self.admin_settings, self._admin_auth)

    def _yield_to_app(self) -> None:
        """Leave ``/healthz`` and ``/readyz`` to a Flask app that routes them itself.

        The health checks are on by default; an application that already had
        its own (an upgrade from Flask-SocketIO, say) keeps answering them.
        Checked at start, when the app's routes are all registered.
        """
        from flask import Flask
        from werkzeug.exceptions import NotFound

        app = self.server.app
        if not isinstance(app, Flask):
            return
        urls = app.url_map.bind("localhost")
        for path in HEALTH_PATHS:
            if path not in self._routes:
                continue
            try:
                urls.match(path, method="GET")
            except NotFound:
                continue
            except Exception:  # a redirect or a method mismatch: the app routes it
                pass
            del self._routes[path]
            log.warning("the application routes %s itself: sbio's health check is not served "
                        "there (set health.enabled = false to turn both off)", path)

    def stop(self) -> None:
        """Stop what :meth:`start` started. Idempotent."""
        self._drain_over.set()
        if self.sampler is not None:
            self.sampler.stop()
        if self.admin is not None:
            self.admin.shutdown()

    def drain(self) -> None:
        """Wait ``health.drain_time`` seconds, or until :meth:`end_drain` (the server's stop).

        Meanwhile the server still accepts requests and ``/readyz`` answers
        503, so load balancers stop sending traffic before it closes.
        """
        if self.drain_time > 0 and not self._drain_over.is_set():
            log.info("draining for up to %g s (health.drain_time): /readyz answers 503; "
                     "stop again to end the wait", self.drain_time)
            self._drain_over.wait(self.drain_time)

    def end_drain(self) -> None:
        """End :meth:`drain` at once (a second ``stop()``, a second SIGTERM)."""
        self._drain_over.set()

    # -- HTTP ----------------------------------------------------------------------------

    def route(self, environ: Mapping[str, Any], start_response: _StartResponse
              ) -> _WSGIAnswer | None:
        """Answer the request if it is for an operations endpoint, else None."""
        handler = self._routes.get(environ.get("PATH_INFO", ""))
        if handler is None:
            return None
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", b"GET only\n",
                           "text/plain; charset=utf-8", [("Allow", "GET, HEAD")], environ)
        return handler(environ, start_response)

    def readiness(self) -> tuple[bool, str]:
        """``(ready, reason)``: see :func:`sbio.ops.health.readiness`."""
        return readiness(self.server)

    def _healthz(self, environ: Mapping[str, Any], start_response: _StartResponse
                 ) -> _WSGIAnswer:
        return _json(start_response, "200 OK", {"status": "ok"}, environ)

    def _readyz(self, environ: Mapping[str, Any], start_response: _StartResponse
                ) -> _WSGIAnswer:
        ready, reason = self.readiness()
        status = "200 OK" if ready else "503 Service Unavailable"
        return _json(start_response, status, {"ready": ready, "reason": reason}, environ)

    def _refused(self, environ: Mapping[str, Any], start_response: _StartResponse,
                 query_token: bool = False) -> _WSGIAnswer | None:
        assert self.access is not None
        refusal = self.access.refusal(environ, query_token)
        if refusal is None:
            return None
        status, headers, message = refusal
        return _answer(start_response, status, (message + "\n").encode(),
                       "text/plain; charset=utf-8", headers, environ)

    def _scrape(self, environ: Mapping[str, Any], start_response: _StartResponse
                ) -> _WSGIAnswer:
        refused = self._refused(environ, start_response)
        if refused is not None:
            return refused
        body, content_type = self.metrics.exposition(str(environ.get("HTTP_ACCEPT") or ""))
        return _answer(start_response, "200 OK", body, content_type, [], environ)

    def _status_page(self, environ: Mapping[str, Any], start_response: _StartResponse
                     ) -> _WSGIAnswer:
        refused = self._refused(environ, start_response, query_token=True)
        if refused is not None:
            return refused
        return _answer(start_response, "200 OK", page(), "text/html; charset=utf-8",
                       [("Referrer-Policy", "no-referrer")], environ)


def _json(start_response: _StartResponse, status: str, data: Any,
          environ: Mapping[str, Any]) -> _WSGIAnswer:
    body = (json.dumps(data) + "\n").encode()
    return _answer(start_response, status, body, "application/json", [], environ)


def _answer(start_response: _StartResponse, status: str, body: bytes, content_type: str,
            headers: list[tuple[str, str]], environ: Mapping[str, Any]) -> _WSGIAnswer:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
