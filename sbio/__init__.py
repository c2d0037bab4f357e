"""sbio: real-time web applications on gevent and socket.io.

The public API, in one place:

* :class:`Namespace` — subclass it; one instance per connection, with
  ``session``, an ACL over its ``on_*`` handlers, rooms and owned greenlets.
* :func:`event` — ``@sbio.event("chat message")`` makes a method the handler
  of any event name; ``raw=True`` acks its return value as plain socket.io does.
* :class:`Server` — hosts namespaces and a Flask app on a gevent WSGIServer.
* :class:`Client`, :class:`Subscription` — a Python client of sbio servers
  (calls, subscriptions, reconnects), for scripts and server-to-server work.
* :func:`subscribes`, :func:`notifies`, :func:`notify` — live data: handlers
  clients subscribe to, re-run and pushed when their channels are notified.
* :func:`rate_limit` — limit the calls of one handler per connection.
* :func:`register_json_type` — send values of your own types as JSON (every
  server of the process; ``server.register_json_type`` for one server).
* :class:`DaemonTask`, :class:`Caller`, :class:`GenericCaller`,
  :func:`on_startup`, :func:`on_shutdown`, :data:`stopped` — background work
  tied to the server's lifecycle.
* :func:`notify_remote` — notify the subscribers of a cluster of servers from
  a program that is not one (a cron job, a worker).
* :func:`parse_config` — layered, validated configuration for your package.
* :class:`RpcError`, :class:`CallTimeout`, :class:`ConnectionRefused`,
  :class:`ConnectionFailed`, :class:`SbioError`, :class:`SbioTimeoutError`,
  :class:`ConfigurationError`, :class:`LifecycleError`, :class:`QueueFull` —
  the exception tree.

Importing sbio has no side effects: no monkey-patching, no sockets, no
configuration parsed. The names are loaded on first use, so ``import sbio``
does not import socket.io (or the network libraries it pulls in) before you
had the chance to monkey-patch.
"""
import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Namespace": "sbio.namespace",
    "event": "sbio.namespace",
    "Server": "sbio.server",
    "Client": "sbio.client",
    "Subscription": "sbio.client",
    "RpcError": "sbio.errors",
    "CallTimeout": "sbio.errors",
    "ConnectionRefused": "sbio.errors",
    "ConnectionFailed": "sbio.errors",
    "SbioError": "sbio.errors",
    "SbioTimeoutError": "sbio.errors",
    "subscribes": "sbio.live",
    "notifies": "sbio.live",
    "notify": "sbio.live",
    "rate_limit": "sbio.limits",
    "register_json_type": "sbio.jsonenc",
    "DaemonTask": "sbio.tasks",
    "Caller": "sbio.tasks",
    "GenericCaller": "sbio.tasks",
    "on_startup": "sbio.tasks",
    "on_shutdown": "sbio.tasks",
    "stopped": "sbio.tasks",
    "LifecycleError": "sbio.errors",
    "QueueFull": "sbio.errors",
    "notify_remote": "sbio.cluster",
    "parse_config": "sbio.config",
    "ConfigurationError": "sbio.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    # What type checkers see (``X as X``: an explicit re-export); at run time
    # __getattr__ below loads each name on first use.
    from .client import Client as Client
    from .client import Subscription as Subscription
    from .cluster import notify_remote as notify_remote
    from .config import parse_config as parse_config
    from .errors import CallTimeout as CallTimeout
    from .errors import ConfigurationError as ConfigurationError
    from .errors import ConnectionFailed as ConnectionFailed
    from .errors import ConnectionRefused as ConnectionRefused
    from .errors import LifecycleError as LifecycleError
    from .errors import QueueFull as QueueFull
    from .errors import RpcError as RpcError
    from .errors import SbioError as SbioError
    from .errors import SbioTimeoutError as SbioTimeoutError
    from .jsonenc import register_json_type as register_json_type
    from .limits import rate_limit as rate_limit
    from .live import notifies as notifies
    from .live import notify as notify
    from .live import subscribes as subscribes
    from .namespace import Namespace as Namespace
    from .namespace import event as event
    from .server import Server as Server
    from .tasks import Caller as Caller
    from .tasks import DaemonTask as DaemonTask
    from .tasks import GenericCaller as GenericCaller
    from .tasks import on_shutdown as on_shutdown
    from .tasks import on_startup as on_startup
    from .tasks import stopped as stopped


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sbio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
