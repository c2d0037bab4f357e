"""sbio: real-time web applications on gevent and socket.io.

The public API, in one place:

* :class:`Namespace` — subclass it; one instance per connection, with
  ``session``, an ACL over its ``on_*`` handlers, rooms and owned greenlets.
* :class:`Server` — hosts namespaces and a Flask app on a gevent WSGIServer.
* :func:`subscribes`, :func:`notifies`, :func:`notify` — live data: handlers
  clients subscribe to, re-run and pushed when their channels are notified.
* :func:`rate_limit` — limit the calls of one handler per connection.
* :class:`DaemonTask`, :class:`Caller`, :class:`GenericCaller`,
  :func:`on_startup`, :func:`on_shutdown`, :data:`stopped` — background work
  tied to the server's lifecycle.
* :func:`notify_remote` — notify the subscribers of a cluster of servers from
  a program that is not one (a cron job, a worker).
* :func:`parse_config` — layered, validated configuration for your package.
* :class:`RpcError`, :class:`ConnectionRefused`, :class:`SbioError`,
  :class:`SbioTimeoutError`, :class:`ConfigurationError`,
  :class:`LifecycleError`, :class:`QueueFull` — the exception tree.

Importing sbio has no side effects: no monkey-patching, no sockets, no
configuration parsed. The names are loaded on first use, so ``import sbio``
does not import socket.io (or the network libraries it pulls in) before you
had the chance to monkey-patch.
"""
import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "Namespace": "sbio.namespace",
    "Server": "sbio.server",
    "RpcError": "sbio.errors",
    "ConnectionRefused": "sbio.errors",
    "SbioError": "sbio.errors",
    "SbioTimeoutError": "sbio.errors",
    "subscribes": "sbio.live",
    "notifies": "sbio.live",
    "notify": "sbio.live",
    "rate_limit": "sbio.limits",
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


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sbio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
