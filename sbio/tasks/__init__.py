"""Background tasks and the process lifecycle.

* :class:`DaemonTask` -- greenlets that run a function in a loop (or every
  *interval* seconds) while the server runs;
* :class:`Caller` / :class:`GenericCaller` -- greenlet workers consuming a
  bounded queue of deferred calls;
* :func:`on_startup` / :func:`on_shutdown` -- hooks run in priority order when
  the server starts and stops;
* :data:`stopped` -- a :class:`gevent.event.Event`, set while the server is not
  running;
* :class:`Lifecycle` -- the object that owns all of the above; :data:`lifecycle`
  is the module-level instance where module-level declarations go, and that
  a :class:`~sbio.Server` made without ``lifecycle=`` starts (unless it runs
  already) and stops (only if that server started it).

Rules this package keeps (see ``docs/tasks.md``):

* nothing happens at import time: no greenlet, queue or hub is created until
  something is started or deferred;
* loops wait on an event with a timeout, so ``stop()`` takes effect at once and
  idle tasks never wake up for nothing;
* every greenlet belongs to a :class:`gevent.pool.Group` owned by its task;
  ``stop(timeout)`` asks, joins up to the deadline, then kills what is left and
  logs the task's name;
* errors are logged with the task's or hook's name (``logging``, never
  ``print``, logger ``sbio.tasks``); a failing task keeps running.

Import everything from ``sbio.tasks``; the modules of the package, each one
concept (an arrow: imports):

* ``_lifecycle``: :class:`Lifecycle`, its hooks, and what tasks share with it
  (their states, :func:`current_lifecycle`, :func:`default_waiter`; for type
  hints the :data:`Waiter` type and the :class:`LockBackend` / :class:`Lease`
  protocols); the underscore because ``sbio.tasks.lifecycle`` is the instance below;
* ``hooks``: the module-level :data:`lifecycle`, :func:`on_startup`,
  :func:`on_shutdown`, :data:`stopped` -> _lifecycle;
* ``service``: the greenlet group a task or caller owns, started and stopped
  together -> _lifecycle, hooks;
* ``daemon``: :class:`DaemonTask` (and its cluster-wide ``singleton`` mode) -> service;
* ``caller``: :class:`Caller`, :class:`GenericCaller` -> service.
"""
from sbio.errors import LifecycleError, QueueFull

from ._lifecycle import (
    DEFAULT_PRIORITY,
    Lease,
    Lifecycle,
    LockBackend,
    Waiter,
    current_lifecycle,
    default_waiter,
)
from .caller import Caller, GenericCaller
from .daemon import DaemonTask
from .hooks import lifecycle, on_shutdown, on_startup, stopped

__all__ = [
    "DaemonTask",
    "Caller",
    "GenericCaller",
    "Lifecycle",
    "LifecycleError",
    "QueueFull",
    "lifecycle",
    "on_startup",
    "on_shutdown",
    "stopped",
    "default_waiter",
    "current_lifecycle",
    "DEFAULT_PRIORITY",
    "Waiter",
    "LockBackend",
    "Lease",
]
