"""The browser client every sbio server serves: ``/sbio/sbio.js`` and ``/sbio/socket.io.min.js``.

A page in any project needs two ``<script>`` tags and no npm step::

    <script src="/sbio/socket.io.min.js"></script>
    <script src="/sbio/sbio.js"></script>

The files are package data in ``sbio/_client/``, copied at build time (see
``setup.py``) from the repository's ``static/sbio.js`` — the one source of
the client, also the npm package's file — and from socket.io-client's browser
bundle in ``static/node_modules/socket.io-client/dist/``. In a checkout (an
editable install) ``sbio/_client/`` does not exist and the same files are
served from ``static/`` directly, so an edit to ``static/sbio.js`` shows at
once.

Answers carry ``ETag`` and ``Last-Modified`` with ``Cache-Control: no-cache``:
browsers keep the files and revalidate them (a 304, no body) on each load, so
a page never runs an ``sbio.js`` older than the server it talks to.
"""
import logging
import os

from flask import Blueprint, Flask, Response, abort, send_file

__all__ = ["URL_PREFIX", "FILES", "asset_path", "blueprint", "install"]

log = logging.getLogger(__name__)

#: Where the files are served.
URL_PREFIX = "/sbio"

_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_client")
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHECKOUT_STATIC = os.path.join(_CHECKOUT, "static")
_SOCKETIO_DIST = os.path.join("node_modules", "socket.io-client", "dist")

#: Served name -> its source in a checkout, relative to ``static/`` (what the
#: build copies into ``sbio/_client/``). Source maps are optional.
FILES = {
    "sbio.js": "sbio.js",
    "socket.io.min.js": os.path.join(_SOCKETIO_DIST, "socket.io.min.js"),
    "socket.io.min.js.map": os.path.join(_SOCKETIO_DIST, "socket.io.min.js.map"),
}
#: The files a build must find (the others are copied when present).
REQUIRED = ("sbio.js", "socket.io.min.js")

_warned: set[str] = set()


def _is_checkout() -> bool:
    """True when sbio runs from a source checkout (static/ beside the package is sbio's)."""
    return (os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml"))
            and os.path.isfile(os.path.join(_CHECKOUT_STATIC, "package.json"))
            and os.path.isfile(os.path.join(_CHECKOUT_STATIC, "sbio.js")))


def asset_path(name: str) -> str | None:
    """The file served as ``/sbio/<name>``, or None when it is not there.

    Package data first (an installed wheel), else the checkout's ``static/``.
    """
    source = FILES.get(name)
    if source is None:
        return None
    if os.path.isdir(_PACKAGE_DIR):
        path = os.path.join(_PACKAGE_DIR, name)
    elif _is_checkout():
        path = os.path.join(_CHECKOUT_STATIC, source)
    else:
        path = None
    if path is None or not os.path.isfile(path):
        if name in REQUIRED and name not in _warned:
            _warned.add(name)
            if _is_checkout():
                how = "run `npm ci --prefix static` in the sbio checkout"
            else:
                how = "this sbio installation is incomplete: reinstall it from a wheel"
            log.error("%s/%s is not available (%s)", URL_PREFIX, name, how)
        return None
    return path


def blueprint() -> Blueprint:
    """A Flask blueprint serving :data:`FILES` at :data:`URL_PREFIX` (one per app)."""
    bp = Blueprint("sbio_client", __name__, url_prefix=URL_PREFIX)

    @bp.route("/<name>")
    def asset(name: str) -> Response:
        path = asset_path(name)
        if path is None:
            abort(404)
        # conditional: ETag, Last-Modified, 304 and Range; no max_age: no-cache.
        return send_file(path, mimetype="application/json" if name.endswith(".map")
                         else "text/javascript", conditional=True, etag=True, max_age=None)

    return bp


def install(app: Flask) -> None:
    """Serve the client files on the Flask *app* (once per app; the Server calls this)."""
    if "sbio_client" not in app.blueprints:
        app.register_blueprint(blueprint())
