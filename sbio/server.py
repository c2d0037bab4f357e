"""The sbio :class:`Server`: socket.io + Flask on a gevent WSGIServer, and its lifecycle.

Monkey-patching: the server itself does not need it, but database drivers,
Redis clients and code calling ``notify()`` from threads do. ``sbio run`` and
the pytest plugin call ``gevent.monkey.patch_all()`` first thing; when you
embed the server in your own program, do the same before importing anything
else::

    from gevent import monkey; monkey.patch_all()
    import sbio
"""
from __future__ import annotations

import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import gevent.event
import socketio
from flask import Blueprint, Flask, abort, render_template_string, send_from_directory
from flask.typing import ResponseReturnValue
from gevent.pywsgi import LoggingLogAdapter
from werkzeug.exceptions import HTTPException, NotFound

from . import client_assets
from .access import AccessLog
from .adapter import (
    ConnectionLimitedWSGIServer,
    SocketIOServer,
    close_transports,
    connection_cap,
    websocket_handler_class,
)
from .hub import HubHandoff, real_thread_ident
from .jsonenc import Converter, JSONProvider
from .namespace import Namespace

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .cluster import Cluster
    from .dispatch import NamespaceDispatcher
    from .live import Bus, LiveData
    from .tasks import Lifecycle

__all__ = ["Server"]

_S = TypeVar("_S", bound="Server")

log = logging.getLogger(__name__)


_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sbio</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 3rem auto;
       padding: 0 1rem; color: #1f2933; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; font-size: 1.1rem; }
ul { padding-left: 1.2rem; } code { background: #eef2f7; padding: .1rem .3rem; border-radius: 3px; }
a { color: #2563eb; } .muted { color: #6b7280; }
</style></head>
<body><h1>sbio</h1><p class="muted">Real-time web applications on gevent and socket.io.</p>
{% if pages %}<h2>Pages</h2>
<ul>{% for page in pages %}<li><a href="{{ page.url }}">{{ page.url }}</a> \
&mdash; {{ page.doc }}</li>{% endfor %}</ul>{% endif %}
<h2>Namespaces</h2><p>Namespaces mounted on this server:</p>
<ul>{% for ns in namespaces %}<li><code>{{ ns.name }}</code> &mdash; {{ ns.doc }}</li>\
{% endfor %}</ul>
{% if status_url %}<h2>Operations</h2><ul><li><a href="{{ status_url }}">{{ status_url }}</a> \
&mdash; live status: connections, events, broadcaster</li></ul>{% endif %}
</body></html>"""


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


#: Headers added to every HTTP answer that does not set them itself (``server.security_headers``).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("Referrer-Policy", "same-origin"),
)

#: Files the default app never serves from ``static_dir``, in any directory.
_STATIC_REFUSED_FILES = frozenset({"package.json", "package-lock.json", "npm-shrinkwrap.json",
                                   "yarn.lock", "pnpm-lock.yaml"})
#: Directories the default app never serves from (``node_modules`` but its allow-list).
_STATIC_REFUSED_DIRS = frozenset({"node_modules", "test", "tests"})


def _static_allowed(path: str, node_modules: Collection[str] = ()) -> bool:
    """True when the default app serves *path* (relative to ``server.static_dir``).

    Refused: any part starting with ``.`` (dotfiles, ``..``) or empty, package
    manifests and lock files (:data:`_STATIC_REFUSED_FILES`), and everything in
    a ``node_modules``, ``test`` or ``tests`` directory, except the files of
    ``node_modules/`` listed in *node_modules* (``server.static_node_modules``,
    paths relative to ``node_modules/``).
    """
    parts = path.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return False
    if parts[0] == "node_modules" and "/".join(parts[1:]) in node_modules:
        return True
    return parts[-1] not in _STATIC_REFUSED_FILES and \
        not any(part in _STATIC_REFUSED_DIRS for part in parts[:-1])


#: Attributes a Server builds from its configuration, on first use (see Server._build).
_BUILT_ATTRIBUTES = frozenset({"config", "host", "_port", "debug", "max_message_size", "sio",
                               "cluster", "live", "app", "flask_app", "access_log",
                               "_socketio_app", "ops"})


def _check_app(app: object) -> None:
    """Refuse, with a TypeError, an *app* that is neither None, a Flask app nor a WSGI callable."""
    if app is None or isinstance(app, Flask):
        return
    if isinstance(app, type) or not callable(app):
        what = f"the class {app.__qualname__}" if isinstance(app, type) else repr(app)
        raise TypeError(
            f"Server(app=...) takes a Flask app or a WSGI application (a callable "
            f"taking environ and start_response), got {what}")


class _Mount:
    """A WSGI application beside sbio's own Flask app (``Server(app=<WSGI callable>)``).

    The URLs the Flask app has a route for (the browser client at
    ``/sbio/``, the blueprints of :meth:`Server.add_blueprint`) go to it;
    every other URL goes to the mounted application.
    """

    def __init__(self, flask_app: Flask, app: WSGIApplication) -> None:
        self.flask_app = flask_app
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        try:
            self.flask_app.url_map.bind_to_environ(environ).match()
        except NotFound:
            return self.app(environ, start_response)
        except HTTPException:  # a route, another method or a redirect: Flask answers
            pass
        return self.flask_app(environ, start_response)


class Server:
    """An sbio server: socket.io namespaces and a Flask app on one gevent WSGIServer.

    Making a Server does no I/O and touches nothing outside it: it binds no
    port, joins no bus, connects to no Redis and registers nothing on the
    lifecycle; :meth:`start` does all that. Without a *config* it does not
    even read the configuration yet: that happens on first need (:meth:`start`,
    :meth:`add_namespace`, or reading :attr:`sio`, :attr:`live`, :attr:`app`,
    :attr:`config` ...).

    :param namespaces: :class:`~sbio.Namespace` subclasses to host.
    :param config: sbio's configuration (see ``docs/configuration.md``); by
        default :func:`sbio.config.load_sbio_config` is read (from the current
        directory, the environment and ``/etc/sbio``) when first needed.
    :param app: what answers the HTTP requests that are not socket.io's: a
        Flask app, or any WSGI application (a Django project's
        ``get_wsgi_application()``...); by default a small Flask app serving
        the configured ``static_dir`` at ``/static`` and an index page listing
        the namespaces. Handlers run in the Flask contexts of
        :attr:`flask_app`. Anything else raises TypeError.
    :param host: overrides ``server.host``.
    :param port: overrides ``server.port`` (0 picks a free port; see :attr:`port`).
    :param lifecycle: the :class:`sbio.tasks.Lifecycle` whose hooks, DaemonTasks
        and Callers start and stop with this server (by default the module-level
        ``sbio.tasks.lifecycle``, where ``DaemonTask(...)`` and ``@on_startup``
        declare themselves). :meth:`start` starts it unless it runs already
        (started by another server of the process, which then keeps running
        it: its tasks run once per process, not once per server); a server
        stops the lifecycle only if it was the one that started it.
    :param blueprints: Flask :class:`~flask.Blueprint`\\ s to register on the
        app (see :meth:`add_blueprint`); ``sbio run`` passes the module-level
        ``blueprint`` of each namespace module.
    :param bus: the live-data :class:`sbio.live.Bus` of this server (a new
        :class:`~sbio.live.LocalBus` by default, or the cluster's Redis bus
        with ``server.message_queue``); see :attr:`bus`.
    :param json: the :class:`sbio.jsonenc.JSONProvider` that encodes every
        value this server sends (see :attr:`json`); by default a new
        :attr:`json_provider_class`.
    """

    #: The python-socketio server class; override to customize dispatch.
    socketio_server_class = SocketIOServer
    #: The class of :attr:`json` made when no ``json=`` is given.
    json_provider_class = JSONProvider

    # Made by _build() from the configuration, on first use (_BUILT_ATTRIBUTES):
    #: the configuration (a :class:`sbio.config.Config`, or the mapping given)
    config: Any
    #: ``server.host``, or the *host* given
    host: str
    _port: int
    #: ``server.debug``
    debug: bool
    #: ``server.max_message_size``: bytes
    max_message_size: int
    #: the python-socketio server
    sio: SocketIOServer
    #: the Redis pieces with ``server.message_queue`` (see :mod:`sbio.cluster`), else None
    cluster: Cluster | None
    #: live data (subscriptions and their broadcasters), see :mod:`sbio.live`
    live: LiveData
    #: what answers HTTP requests other than socket.io's: the *app* given (any WSGI app)
    app: Any
    #: the Flask app handlers, hooks and tasks run in: :attr:`app` if it is one, else sbio's own
    flask_app: Flask
    _socketio_app: Any

    def __init__(self, namespaces: Iterable[type[Namespace]] = (),
                 config: Mapping[str, Any] | None = None, app: Any = None,
                 host: str | None = None, port: int | None = None,
                 lifecycle: Lifecycle | None = None, blueprints: Iterable[Blueprint] = (),
                 bus: Bus | None = None, json: JSONProvider | None = None) -> None:
        if lifecycle is None:
            from .tasks import lifecycle as process_lifecycle

            lifecycle = process_lifecycle
        _check_app(app)
        self.lifecycle: Lifecycle = lifecycle
        #: How this server writes JSON (acks, emits, calls, live pushes, emits
        #: relayed through Redis): its own conversions (:meth:`register_json_type`),
        #: then the process-wide ones (:func:`sbio.register_json_type`), then
        #: sbio's built-ins. See docs/protocol.md, "Values on the wire".
        self.json: JSONProvider = self.json_provider_class() if json is None else json
        self._owns_lifecycle = False
        self._hook_keys: list[tuple[str, type[Namespace]]] = []
        self._options: dict[str, Any] = {"config": config, "app": app, "host": host,
                                         "port": port, "bus": bus}
        self._connection_sessions: dict[str, dict[str, Any]] = {}
        self._wsgi_server: ConnectionLimitedWSGIServer | None = None
        self._wsgi_servers: list[ConnectionLimitedWSGIServer] = []
        # hands emits made in other OS threads to the hub of the server's thread
        self._handoff: HubHandoff | None = None
        self._served_unstarted = False
        self._stopping = False
        self._stopped = gevent.event.Event()
        self._stopped.set()
        #: namespace name -> the Namespace subclass served there
        self.namespaces: dict[str, type[Namespace]] = {}
        #: the blueprints registered on :attr:`app`
        self.blueprints: list[Blueprint] = []
        self._built = False
        # added by _build()
        self._pending: tuple[tuple[type[Namespace], ...], tuple[Blueprint, ...]] = (
            tuple(namespaces), tuple(blueprints))
        for cls in self._pending[0]:
            self.namespaces[self._check_namespace(cls)] = cls
        if config is not None:
            self._build()  # in memory only; without a config, on first need

    if not TYPE_CHECKING:
        # Hidden from type checkers, which see the built attributes declared
        # above, so that a misspelt attribute stays an error for them.
        def __getattr__(self, name):
            # Only called for attributes not set yet: those _build() makes.
            if name in _BUILT_ATTRIBUTES and not self.__dict__.get("_built", True):
                self._build()
                return getattr(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _build(self) -> None:
        """Make what the configuration decides: socket.io server, live data, Flask app."""
        if self._built:
            return
        self._built = True
        try:
            self._build_from(self._options)
        except BaseException:
            self._built = False
            raise
        namespaces, blueprints = self._pending
        self._pending = ((), ())
        for cls in namespaces:
            self.add_namespace(cls)
        for blueprint in blueprints:
            self.add_blueprint(blueprint)

    def _build_from(self, options: dict[str, Any]) -> None:
        config = options["config"]
        if config is None:
            from .config import load_sbio_config
            config = load_sbio_config()
        self.config = config
        server_cfg = config["server"]
        host, port = options["host"], options["port"]
        self.host = host if host is not None else server_cfg["host"]
        self._port = port if port is not None else server_cfg["port"]
        self.debug = bool(server_cfg["debug"])
        self.max_message_size = int(server_cfg["max_message_size"])

        self._open_handoff()
        self.sio = self.socketio_server_class(
            self,
            async_mode="gevent",
            async_handlers=True,
            logger=logging.getLogger("sbio.socketio"),
            engineio_logger=logging.getLogger("sbio.engineio"),
            cors_allowed_origins=self._cors(server_cfg["cors_allowed_origins"]),
            max_http_buffer_size=self.max_message_size,
            ping_interval=server_cfg["ping_interval"],
            ping_timeout=server_cfg["ping_timeout"],
            client_manager=self._client_manager(),
        )
        from .live import LiveData

        bus = options["bus"]
        if bus is None and self.cluster is not None:
            bus = self.cluster.bus
        self.live = LiveData(self, config["broadcaster"], bus=bus)
        #: the access log (logger ``sbio.access``), see :mod:`sbio.access`
        self.access_log = AccessLog(config.get("logging"))
        app = options["app"]
        #: what answers HTTP requests other than socket.io's (the *app* given)
        self.app = app if app is not None else self._default_app()
        #: the Flask app whose app and request contexts handlers, hooks and
        #: tasks run in: :attr:`app` when it is a Flask app, else sbio's own
        #: (it serves the browser client and the blueprints beside *app*)
        self.flask_app = self.app if isinstance(self.app, Flask) else Flask("sbio")
        client_assets.install(self.flask_app)  # /sbio/sbio.js, /sbio/socket.io.min.js
        if not self.flask_app.secret_key:
            self.flask_app.secret_key = self._secret_key()
        pages = self.app if self.app is self.flask_app else _Mount(self.flask_app, self.app)
        self._socketio_app = socketio.WSGIApp(self.sio, pages)
        from .ops import Operations

        #: health checks, metrics, status page, Admin UI (see docs/operations.md)
        self.ops = Operations(self)

    @property
    def bus(self) -> Bus:
        """This server's live-data bus (``self.live.bus``): what its notifications go through."""
        return self.live.bus

    # -- configuration helpers -----------------------------------------------------

    @staticmethod
    def _cors(origins: Iterable[str] | None) -> str | list[str] | None:
        origins = [o for o in (origins or []) if o]
        if not origins:
            return None  # same origin only
        if "*" in origins:
            return "*"
        return origins

    def _client_manager(self) -> Any:
        """python-socketio's client manager: in-memory, or Redis with ``server.message_queue``.

        With a message queue this also builds :attr:`cluster` (a
        :class:`sbio.cluster.Cluster`: the Redis manager, live-data bus and
        singleton-task lock), started and stopped with the server.
        """
        self.cluster = None
        url = (self.config["server"].get("message_queue") or "").strip()
        if not url:
            return None
        from .cluster import Cluster

        self.cluster = Cluster(url, self.config.get("cluster"))
        return self.cluster.client_manager

    def _secret_key(self) -> str:
        key = self.config["server"].get("secret_key")
        if key:
            return str(key)
        if not self.debug:
            log.warning("server.secret_key is not set: generated a random one for this "
                        "process, so Flask sessions do not survive a restart or span "
                        "processes. Set [server] secret_key in the configuration (e.g. "
                        "/etc/sbio/sbio.ini) or the environment variable "
                        "SBIO_SERVER__SECRET_KEY, to the output of: python -c \"import "
                        "secrets; print(secrets.token_hex(32))\"")
        return secrets.token_hex(32)

    def _default_app(self) -> Flask:
        import os
        server_cfg = self.config["server"]
        static_dir = os.path.abspath(server_cfg.get("static_dir") or "static")
        templates_dir = os.path.abspath(server_cfg.get("templates_dir") or "templates")
        app = Flask("sbio", static_folder=None, template_folder=templates_dir)
        app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True)
        node_modules = frozenset(server_cfg.get("static_node_modules") or ())

        @app.route("/static/<path:filename>", endpoint="static")
        def static(filename: str) -> ResponseReturnValue:
            # Pages need their scripts and styles, never the manifests, tests
            # and node_modules/ that live next to them (see _static_allowed).
            if not _static_allowed(filename, node_modules):
                abort(404)
            return send_from_directory(static_dir, filename)

        @app.route("/")
        def index() -> ResponseReturnValue:
            mounted = [{"name": name, "doc": _first_line(cls.__doc__)}
                       for name, cls in sorted(self.namespaces.items())]
            return render_template_string(_INDEX, namespaces=mounted, pages=self._pages(),
                                          status_url=self.ops.status_url)

        return app

    def _pages(self) -> list[dict[str, str]]:
        """The blueprints that have an ``index`` view: their URL and description."""
        import sys

        from flask import url_for

        pages = []
        for blueprint in self.blueprints:
            endpoint = f"{blueprint.name}.index"
            if endpoint in self.app.view_functions:
                module = sys.modules.get(blueprint.import_name)
                pages.append({"url": url_for(endpoint),
                              "doc": _first_line(getattr(module, "__doc__", None))
                              or blueprint.name})
        return pages

    # -- pages --------------------------------------------------------------------------

    def add_blueprint(self, blueprint: Blueprint, **options: Any) -> Blueprint:
        """Register the Flask *blueprint* on :attr:`flask_app` (before :meth:`start`).

        *options* go to :meth:`flask.Flask.register_blueprint` (``url_prefix``
        ...). The default index page links each blueprint that has a view
        named ``index``, described by the first line of the docstring of the
        blueprint's module (its ``import_name``).
        """
        if self.started:
            raise RuntimeError(
                f"Server.add_blueprint({blueprint.name}) called after start(): "
                "register every blueprint before starting the server")
        self._build()
        self.flask_app.register_blueprint(blueprint, **options)
        self.blueprints.append(blueprint)
        return blueprint

    # -- namespaces --------------------------------------------------------------------

    def add_namespace(self, cls: type[Namespace]) -> NamespaceDispatcher:
        """Host the :class:`~sbio.Namespace` subclass *cls* (before :meth:`start`)."""
        if self.started:
            raise RuntimeError(
                f"Server.add_namespace({cls.__name__}) called after start(): "
                "register every namespace before starting the server")
        name = self._check_namespace(cls)
        self._build()
        self.namespaces[name] = cls
        dispatcher: NamespaceDispatcher = self.sio.add_namespace_class(cls)
        self.live.add_dispatcher(dispatcher)
        self.ops.add_dispatcher(dispatcher)
        return dispatcher

    def _check_namespace(self, cls: object) -> str:
        """*cls*'s namespace name, once it is checked to be one this server may serve."""
        if not (isinstance(cls, type) and issubclass(cls, Namespace)):
            raise TypeError(f"{cls!r} is not a subclass of sbio.Namespace")
        name = cls.name
        if not isinstance(name, str) or not name.startswith("/"):
            raise ValueError(f"{cls.__name__}.name must be a string starting with '/', "
                             f"got {name!r}")
        if name in self.namespaces and self.namespaces[name] is not cls:
            raise ValueError(f"namespace {name} is served by both "
                             f"{self.namespaces[name].__name__} and {cls.__name__}")
        return name

    def _add_namespace_hooks(self) -> None:
        """Register the namespaces' ``on_startup`` / ``on_shutdown`` on the lifecycle (at start)."""
        for cls in self.namespaces.values():
            startup = getattr(cls, "on_startup", None)
            shutdown = getattr(cls, "on_shutdown", None)
            if startup is None and shutdown is None:
                continue
            key = ("sbio.namespace", cls)
            if self.lifecycle.has_hooks(key):
                continue  # keyed by class: another server hosting cls added them
            self.lifecycle.add_hooks(startup=startup, shutdown=shutdown, key=key,
                                     name=cls.__qualname__)
            self._hook_keys.append(key)

    def _remove_namespace_hooks(self) -> None:
        """Forget the hooks :meth:`_add_namespace_hooks` added, once the lifecycle stopped."""
        if self.lifecycle.running:
            return  # another server runs it: the hooks are due at its stop
        keys, self._hook_keys = self._hook_keys, []
        for key in keys:
            self.lifecycle.remove_hooks(key)

    def dispatcher(self, name: str) -> NamespaceDispatcher:
        """The :class:`~sbio.dispatch.NamespaceDispatcher` of namespace *name*."""
        dispatcher: NamespaceDispatcher = self.sio.dispatchers[name]
        return dispatcher

    @functools.cached_property
    def _security_headers(self) -> tuple[tuple[str, str], ...]:
        """:data:`SECURITY_HEADERS`, or none with ``server.security_headers = false``."""
        return SECURITY_HEADERS if self.config["server"]["security_headers"] else ()

    def _add_security_headers(self, start_response: StartResponse) -> StartResponse:
        """*start_response*, adding each of :attr:`_security_headers` the answer lacks."""
        headers = self._security_headers
        if not headers:
            return start_response

        def add(status: str, response_headers: list[tuple[str, str]],
                exc_info: Any = None) -> Callable[[bytes], object]:
            present = {name.lower() for name, _ in response_headers}
            missing = [h for h in headers if h[0].lower() not in present]
            return start_response(status, list(response_headers) + missing, exc_info)
        return add

    def wsgi_app(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: socket.io at ``/socket.io/``, the Flask app elsewhere.

        Every answer gets :data:`SECURITY_HEADERS` that it does not set
        itself. A long-polling POST larger than ``server.max_message_size`` is
        refused here with 413 before Engine.IO sees it (Engine.IO would leave
        such a request hanging).

        Served by anything but :meth:`start` (a plain gunicorn worker, uWSGI,
        this method mounted under another server), nothing of the lifecycle
        runs: the first request logs an error saying what to do instead.
        """
        if not self._served_unstarted and self._stopped.is_set() and self._wsgi_server is None:
            self._served_unstarted = True
            log.error(
                "this sbio Server is answering requests but was never started: its startup "
                "hooks, DaemonTasks and live-data broadcasters do not run and websockets lack "
                "sbio's limits. Serve it with `sbio run`, or with gunicorn's worker class "
                "sbio.gunicorn.Worker (`gunicorn -k sbio.gunicorn.Worker -w 1 sbio.wsgi:app`; "
                "see docs/scaling.md), not as a plain WSGI application")
        start_response = self._add_security_headers(start_response)
        answer = self.ops.route(environ, start_response)  # /healthz, /readyz, /metrics ...
        if answer is not None:
            return answer
        if self._stopping and environ.get("PATH_INFO", "").startswith("/socket.io") \
                and "sid=" not in environ.get("QUERY_STRING", ""):
            # A handshake while stopping, over a keep-alive connection the
            # closed listener did not stop: refused, so the client retries and
            # reaches the restarted server instead of a session closed at once.
            body = b"server stopping\n"
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                ("Retry-After", "1"), ("Connection", "close")])
            return [body]
        if environ.get("REQUEST_METHOD") == "POST" and \
                environ.get("PATH_INFO", "").startswith("/socket.io"):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > self.max_message_size:
                log.info("refusing a %d-byte polling POST from %s (limit %d)", length,
                         environ.get("REMOTE_ADDR"), self.max_message_size)
                body = (f"message too big: {length} bytes, "
                        f"limit {self.max_message_size}\n").encode()
                start_response("413 Payload Too Large", [
                    ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                    ("Connection", "close")])
                return [body]
        result: Iterable[bytes] = self._socketio_app(environ, start_response)
        return result

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        """A Server is a WSGI application (:meth:`wsgi_app`): ``gunicorn -k
        sbio.gunicorn.Worker myapp:server`` serves it with its lifecycle."""
        return self.wsgi_app(environ, start_response)

    def _connection_session(self, eio_sid: str) -> dict[str, Any]:
        session = self._connection_sessions.get(eio_sid)
        if session is None:
            session = self._connection_sessions[eio_sid] = {}
        return session

    # -- values on the wire ---------------------------------------------------------

    def register_json_type(self, cls: type, fn: Converter) -> None:
        """Encode instances of *cls* (and subclasses) as ``fn(value)`` on this server only.

        ::

            server.register_json_type(Money, lambda m: {"amount": str(m.amount),
                                                        "currency": m.currency})

        *fn* returns a JSON-able value (it may hold datetimes, other
        registered types...). It wins over a process-wide
        :func:`sbio.register_json_type` of the same class; other servers of
        the process do not see it. Register before :meth:`start`.

        :raises RuntimeError: the server is running.
        :raises TypeError: see :meth:`sbio.jsonenc.JSONTypes.register`.
        """
        if self.started:
            raise RuntimeError(
                f"Server.register_json_type({getattr(cls, '__qualname__', cls)}) called after "
                "start(): register every JSON type before starting the server")
        self.json.register_type(cls, fn)

    # -- emitting from outside handlers ----------------------------------------------

    def emit(self, event: str, *args: Any, namespace: str,
             to: str | Sequence[str] | None = None) -> None:
        """Send *event* to *namespace* (every connection), or to *to* (sid, room or list).

        Safe from any OS thread, as :meth:`Namespace.emit <sbio.Namespace.emit>`.
        """
        self._run_in_hub(self.sio.emit, event, args, to=to, namespace=namespace)

    # -- other OS threads ------------------------------------------------------------

    def _open_handoff(self) -> None:
        """The hand-off to the hub of the current thread (the one that builds, then serves)."""
        handoff = self._handoff
        if handoff is not None and not handoff.closed and handoff.in_hub_thread():
            return
        if handoff is not None and not handoff.closed:
            handoff.close()
        self._handoff = HubHandoff(in_greenlet=True, name="emit from another thread")

    def _in_hub_thread(self) -> bool:
        """True in the OS thread whose gevent hub runs this server."""
        handoff = self._handoff
        return handoff is None or real_thread_ident() == handoff.thread_ident

    def _run_in_hub(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` now in the server's thread; from another OS
        thread, hand it to the server's hub (run soon, in the order posted, errors
        logged) and return None. After :meth:`stop` work from other threads is dropped.
        """
        handoff = self._handoff
        if handoff is None or real_thread_ident() == handoff.thread_ident:
            return fn(*args, **kwargs)
        handoff.post(functools.partial(fn, *args, **kwargs))
        return None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return not self._stopped.is_set()

    @property
    def stopping(self) -> bool:
        """True from the start of :meth:`stop` until it returns (``/readyz`` answers 503)."""
        return self._stopping and not self._stopped.is_set()

    @property
    def port(self) -> int:
        """The TCP port listened on (the real one once started with port 0)."""
        if self._wsgi_server is not None and self._wsgi_server.server_port is not None:
            return self._wsgi_server.server_port
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self: _S, listeners: Sequence[socket.socket] | None = None) -> _S:
        """Bind the port, start the lifecycle (hooks, tasks), then serve in the background.

        Returns at once; idempotent while running. The port is bound first,
        so a busy port fails before any startup hook or DaemonTask runs. A
        failing startup hook raises :class:`sbio.tasks.LifecycleError` and the
        port is released. A stopped server cannot be started again: make a
        new :class:`Server`.

        :param listeners: sockets, bound and listening, to serve on instead of
            ``host:port`` (what a process manager hands its workers: see
            :class:`sbio.gunicorn.Worker`).
        """
        if self.started:
            return self
        if self._wsgi_server is not None:
            raise RuntimeError("this Server has been stopped and cannot be started again; "
                               "create a new Server")
        self._build()
        self._open_handoff()  # the hub of the thread that serves
        server_cfg = self.config["server"]
        http_timeout = float(server_cfg["http_timeout"])
        handler = websocket_handler_class(
            self.max_message_size, self.sio.eio,
            tcp_nodelay=bool(server_cfg["tcp_nodelay"]), http_timeout=http_timeout)
        max_connections = connection_cap(int(server_cfg["max_connections"]))
        addresses: Sequence[socket.socket | tuple[str, int]] = (
            listeners or [(self.host, self._port)])
        self._wsgi_servers = [ConnectionLimitedWSGIServer(
            listener, self.wsgi_app, handler_class=handler,
            max_connections=max_connections, linger=min(1.0, http_timeout),
            log=LoggingLogAdapter(logging.getLogger("sbio.access.http"), logging.DEBUG),
            error_log=LoggingLogAdapter(logging.getLogger("sbio.wsgi"), logging.ERROR),
        ) for listener in addresses]
        self._wsgi_server = self._wsgi_servers[0]
        for wsgi_server in self._wsgi_servers:
            wsgi_server.init_socket()  # bind: a busy port fails here, before anything ran
        try:
            self._add_namespace_hooks()
            if self.cluster is not None:
                self.cluster.start(self)  # before the lifecycle: singleton tasks need the lock
            self.live.open()  # before the lifecycle: a startup hook's notify() reaches us
            if not self.lifecycle.running:
                # hooks, tasks and deferred calls run in this server's Flask app context
                self.lifecycle.start(context=self.flask_app.app_context)
                self._owns_lifecycle = True
            for wsgi_server in self._wsgi_servers:
                wsgi_server.start()
            self.ops.start()
        except BaseException:
            for wsgi_server in self._wsgi_servers:
                wsgi_server.close()
            self._stop_lifecycle(float(self.config["server"]["shutdown_timeout"]))
            raise
        self._stopping = False
        self._stopped.clear()
        log.info("sbio listening on %s (namespaces: %s)", self.url,
                 ", ".join(sorted(self.namespaces)) or "none")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully, within *timeout* seconds (``server.shutdown_timeout``).

        In order: with ``health.drain_time``, keep serving for that long while
        ``/readyz`` answers 503 (a second ``stop()`` ends the wait), then stop
        accepting connections, close every client's Engine.IO
        connection (``on_disconnect`` runs for each namespace; socket.io
        clients see "transport close" and reconnect, e.g. to the restarted
        server, instead of the "io server disconnect" that would stop them
        for good), let requests in flight finish, then, with the time that is
        left, stop the lifecycle if this server started it (DaemonTasks,
        Callers, shutdown hooks), the live-data broadcasters (the server
        leaves its bus and :func:`sbio.live.running_servers`) and the cluster.
        What is still running at the deadline is killed and logged.
        Idempotent. On a server that was never started (the in-process test
        server) it stops the live-data broadcasters.
        """
        if not self._built:
            return  # never built: nothing was started or opened
        if timeout is None:
            timeout = float(self.config["server"]["shutdown_timeout"])
        if not self.started:
            try:
                self.live.stop(timeout=timeout)
            finally:
                self._close_handoff()
            return
        if self._stopping:
            self.ops.end_drain()  # a second stop() (SIGTERM again): no more waiting
            return
        self._stopping = True
        log.info("sbio stopping (%s)", self.url)
        self.ops.drain()  # health.drain_time: still serving, /readyz at 503
        deadline = time.monotonic() + timeout
        try:
            for server in self._wsgi_servers:
                server.close()  # stop accepting new connections
            self._close_connections(max(0.0, (deadline - time.monotonic()) / 4))
            self.sio.shutdown()  # Engine.IO's service task
            join_deadline = time.monotonic() + max(0.0, (deadline - time.monotonic()) / 2)
            for server in self._wsgi_servers:
                server.stop(timeout=max(0.0, join_deadline - time.monotonic()))
        finally:
            try:
                self._stop_lifecycle(max(0.5, deadline - time.monotonic()))
            finally:
                self._close_handoff()
            self._stopped.set()
            log.info("sbio stopped")

    def _stop_lifecycle(self, timeout: float) -> None:
        """Stop the lifecycle (if this server started it), then the live data and the cluster.

        The live data stops after the lifecycle, so that what a stopping task
        or a shutdown hook notifies still reaches this server (and only it).
        """
        deadline = time.monotonic() + timeout
        self.ops.stop()
        try:
            if self._owns_lifecycle:
                self._owns_lifecycle = False
                self.lifecycle.stop(timeout=max(0.5, timeout * 2 / 3))
        finally:
            try:
                self._remove_namespace_hooks()
                self.live.stop(timeout=max(0.5, deadline - time.monotonic()))
            finally:
                self.access_log.flush()
                if self.cluster is not None:
                    self.cluster.stop()

    def _close_handoff(self) -> None:
        handoff = self._handoff
        if handoff is not None and not handoff.closed:
            if handoff.in_hub_thread():
                handoff.close()
            else:  # stopped from another thread: its hub closes it
                handoff.post(handoff.close)

    def _close_connections(self, timeout: float) -> None:
        """Close every Engine.IO connection; give the CLOSE packets *timeout* s to go out.

        Not ``sio.disconnect()``: its "io server disconnect" tells socket.io
        clients never to reconnect. Not Engine.IO's ``disconnect()`` either: it
        waits without a bound for a long-polling client to fetch its CLOSE.
        """
        close_transports(self.sio, timeout)

    def serve_forever(self) -> None:
        """Start and block until :meth:`stop` is called (e.g. from a signal handler)."""
        self.start()
        self._stopped.wait()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False if *timeout* ran out first."""
        return bool(self._stopped.wait(timeout))

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
