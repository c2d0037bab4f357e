"""Scale-out on Redis: several sbio processes acting as one server.

Setting ``server.message_queue`` (``sbio run --message-queue redis://host:port/db``)
makes the :class:`~sbio.Server` build a :class:`Cluster`, which brings three
pieces, all keyed by the ``[cluster] prefix`` (processes sharing a Redis and a
prefix form one cluster):

* :class:`RedisManager` -- python-socketio's Redis client manager (channel
  ``<prefix>:socketio``): emits, room broadcasts and disconnects reach the
  clients of every process;
* :class:`RedisBus` -- the live-data bus (channel ``<prefix>:live``): every
  :func:`sbio.live.notify` re-runs the subscriptions of every process, once;
* :class:`RedisLocks` -- the lock behind ``DaemonTask(..., singleton=True)``
  (keys ``<prefix>:lock:<task name>``).

:func:`notify_remote` lets a program that is not a server (a cron job, a
worker) notify the subscribers of a cluster.

Redis outages. A process that loses Redis keeps serving its own clients:
emits, broadcasts and notifications reach its local clients as before. The
outage is logged once (a warning when it starts, an info line with what was
lost when it ends); every piece reconnects with capped exponential backoff and
jitter. Meanwhile:

* socket.io emits and broadcasts for other processes are dropped (counted in
  the recovery log line); python-socketio has no replay;
* notifications for other processes are remembered, coalesced by channel (at
  most ``[cluster] max_pending`` channels; beyond that a "resync everything"
  request is remembered instead), and published once Redis is back;
* once reconnected (channels resubscribed), the process re-runs every local
  subscription once, so updates published by other processes while it was
  cut off are not missed; clients get a push only where the result changed;
* singleton tasks: the holder stops its loop when it cannot renew the lock
  before it expires; whoever gets the lock after the outage runs it.

Monkey-patching. redis-py blocks in the socket module: the process must call
``gevent.monkey.patch_all()`` before importing anything else (``sbio run``
and the sbio pytest plugin do). :class:`Cluster` refuses to start otherwise.
:func:`notify_remote` needs no gevent at all.

Modules: :mod:`~sbio.cluster.connection` (URLs, clients, outage bookkeeping,
the subscriber greenlet), :mod:`~sbio.cluster.manager` (socket.io emits),
:mod:`~sbio.cluster.bus` (the live-data bus and its codec),
:mod:`~sbio.cluster.locks` (singleton tasks), :mod:`~sbio.cluster.cluster`
(the object a server owns), :mod:`~sbio.cluster.remote` (:func:`notify_remote`).
"""
from typing import Any

# The names below were all sbio.cluster's before the split; they keep working from here.
from .bus import RESYNC_TRIGGER, RedisBus, decode_bus_message, encode_bus_message  # noqa: F401
from .cluster import Cluster
from .connection import (  # noqa: F401
    _backoff,
    _Health,
    _module,
    _require_monkey_patching,
    _Subscriber,
    check_url,
    make_client,
    redact,
    setting,
)
from .locks import RedisLocks, _Lease, configure  # noqa: F401
from .manager import RedisManager
from .remote import notify_remote

__all__ = ["Cluster", "RedisBus", "RedisLocks", "RedisManager", "configure", "notify_remote",
           "DEFAULT_PREFIX", "RESYNC_TRIGGER"]


def __getattr__(name: str) -> Any:
    # Read from the configspec on first use, not on import (see sbio.config.section_defaults).
    if name in ("DEFAULTS", "DEFAULT_PREFIX"):
        from . import connection

        return getattr(connection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
