"""``sbio.wsgi:app``: what ``sbio run`` serves in the current directory, for gunicorn.

    gunicorn -k sbio.gunicorn.Worker -w 1 -b 127.0.0.1:8282 sbio.wsgi:app

``app`` is the :class:`sbio.Server` that ``sbio run`` would build there, with
the same configuration (``development.ini`` and the other files of the
current directory, ``SBIO_*`` environment variables; see
docs/configuration.md) and the same namespace discovery
(:func:`sbio.cli.make_server`). The address is gunicorn's ``-b``, not
``server.host``/``server.port``. It is built on first access, so importing
this module reads nothing.

A Server is a WSGI application, but only :class:`sbio.gunicorn.Worker` (or
``sbio run``) runs its lifecycle: startup hooks, DaemonTasks, live-data
broadcasters, sbio's websocket limits. Under anything else the first request
logs an error that says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server

    app: Server  # built on first access by __getattr__ below

__all__ = ["app"]

_app: Server | None = None


def _build() -> Server:
    from .cli import _configure_logging, make_server
    from .config import load_sbio_config

    config = load_sbio_config()
    _configure_logging(config["logging"], config["server"]["debug"])
    return make_server(config)


def __getattr__(name: str) -> Server:
    global _app
    if name != "app":
        raise AttributeError(f"module 'sbio.wsgi' has no attribute {name!r}")
    if _app is None:
        _app = _build()
    return _app
