""":class:`DaemonTask`: a function run in a loop (or every *interval* seconds) while
the server runs, optionally in one process of the cluster only (``singleton``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.greenlet import Greenlet

from ._lifecycle import Lease, Lifecycle, Waiter, _qualname, _run_as
from .service import _Service

logger = logging.getLogger("sbio.tasks")  # one logger for the whole package, as documented


class DaemonTask(_Service):
    """Run *func* in greenlets that start and stop with the server.

    ::

        DaemonTask(check_sites, interval=60 * 60 * 24)

    :param func: called with no arguments, again and again, until the task stops.
    :param interval: seconds to wait after each call. ``None`` (or ``0``) calls
        *func* again at once: use it when *func* blocks by itself, and make it
        block with a timeout (e.g. ``queue.get(timeout=1)``) or it will be
        killed, with a warning, when the task stops. For work items pushed by
        other code prefer :class:`Caller`, which blocks on its queue and stops
        cleanly.
    :param threads: how many greenlets run the loop concurrently.
    :param name: used in logs and greenlet names; defaults to the function's
        qualified name.
    :param lifecycle: the :class:`Lifecycle` that starts and stops the task
        (default: the process-wide :data:`lifecycle`). A task created while its
        lifecycle runs starts at once.
    :param waiter: ``waiter(event, timeout) -> bool`` used to wait between
        calls; defaults to the lifecycle's waiter (:func:`default_waiter`).
    :param singleton: run in one process of the cluster only. The process
        holding a lock (the lifecycle's :attr:`Lifecycle.lock_backend`, a
        Redis lock when ``server.message_queue`` is set, see
        ``docs/scaling.md``) runs the loop and renews the lock while it
        lives; the others wait, and one of them takes over within the lock's
        TTL when the holder dies. The lock is named after the task: give
        singleton tasks a *name* that is unique in the cluster. A holder that
        cannot renew its lock before it expires kills its own loop (logged)
        rather than risk two processes running it. Without a lock backend
        (a single process) the task simply runs. Needs ``threads=1``.

    The first call happens as soon as the task starts. An exception from
    *func* is logged with the task's name and the loop goes on; with
    ``interval=None`` it waits :attr:`error_backoff` seconds first, so a
    function that fails at once does not spin.
    """

    kind = "DaemonTask"
    #: Seconds to wait after an exception when ``interval`` is ``None`` or 0.
    error_backoff = 1.0

    def __init__(self, func: Callable[[], object], interval: float | None = None,
                 threads: int = 1, name: str | None = None, *,
                 lifecycle: Lifecycle | None = None, waiter: Waiter | None = None,
                 singleton: bool = False) -> None:
        if not callable(func):
            raise TypeError(f"DaemonTask needs a callable, got {func!r}")
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0
        ):
            raise ValueError(f"DaemonTask interval must be None or a number >= 0, got {interval!r}")
        if singleton and threads != 1:
            raise ValueError(f"a singleton DaemonTask runs one greenlet in one process; "
                             f"got threads={threads!r}")
        super().__init__(name or _qualname(func), threads, lifecycle)
        self.func = func
        self.interval = interval
        self.waiter = waiter
        self.singleton = bool(singleton)
        self._stop_event = Event()
        self._stop_event.set()
        #: calls of *func* since the task was made, by outcome (``ok``, ``error``)
        self.runs = {"ok": 0, "error": 0}
        self.lifecycle._register(self)

    @property
    def stopped(self) -> Event:
        """This run's stop event: set when the task is stopping or stopped."""
        return self._stop_event

    def run_once(self) -> Exception | None:
        """Call *func* once in the current greenlet, exactly as the loop does
        (in the lifecycle's context: the server's Flask app context).

        An exception is logged with the task's name and returned (not raised);
        ``None`` means the call succeeded. The ``sbio_run_task_once`` fixture wraps
        this and re-raises by default.
        """
        try:
            self.lifecycle.in_context(self.func)
        except Exception as exc:
            self.runs["error"] += 1
            logger.exception("DaemonTask %r raised; it keeps running", self.name)
            return exc
        self.runs["ok"] += 1
        return None

    def _wait(self, event: Event, timeout: float | None) -> bool:
        waiter = self.waiter or self.lifecycle.waiter
        return waiter(event, timeout)

    def _on_start(self) -> None:
        # A new event per run: a greenlet abandoned by an earlier stop keeps
        # seeing its own (set) event and never rejoins the loop.
        self._stop_event = Event()

    def _on_signal_stop(self) -> None:
        self._stop_event.set()

    def _run_greenlet(self) -> None:
        if self.singleton:
            self._run_singleton(self._stop_event)
        else:
            self._loop(self._stop_event)

    def _loop(self, stop: Event) -> None:
        while not stop.is_set():
            error = self.run_once()
            if stop.is_set():
                break
            if self.interval:
                if self._wait(stop, self.interval):
                    break
            elif error is not None:
                if self._wait(stop, self.error_backoff):
                    break
            else:
                gevent.sleep(0)  # let other greenlets run between calls

    # -- singleton tasks: one process of the cluster runs the loop ----------------

    #: Seconds between attempts to take the lock while its backend fails
    #: (doubling up to a quarter of the lock's TTL).
    lock_retry_delay = 0.5

    def _run_singleton(self, stop: Event) -> None:
        failing = False
        delay = self.lock_retry_delay
        while not stop.is_set():
            backend = self.lifecycle.lock_backend
            if backend is None:
                logger.info("singleton DaemonTask %r: no cluster lock configured "
                            "(server.message_queue is empty); it runs in this process", self.name)
                self._loop(stop)
                return
            try:
                lease, retry_after = backend.acquire(self.name)
            except Exception as exc:
                if not failing:
                    logger.warning("singleton DaemonTask %r: cannot reach its cluster lock "
                                   "(%s: %s); it does not run here until the lock answers",
                                   self.name, type(exc).__name__, exc)
                    failing = True
                if stop.wait(delay):
                    break
                delay = min(delay * 2, max(self.lock_retry_delay, backend.ttl / 4))
                continue
            if failing:
                logger.info("singleton DaemonTask %r: its cluster lock answers again", self.name)
                failing = False
            delay = self.lock_retry_delay
            if lease is None:  # another process holds it: wait until it may expire
                if stop.wait(retry_after):
                    break
                continue
            logger.info("singleton DaemonTask %r: this process holds the cluster lock; "
                        "running it here", self.name)
            self._hold(lease, stop)

    def _hold(self, lease: Lease, stop: Event) -> None:
        """Run the loop in a worker greenlet while renewing *lease*; release it after.

        The lease is valid until ``lease.valid_until`` (a time.monotonic()
        deadline computed from when the request was sent, so it ends before
        the lock expires in the backend). The worker is killed *margin*
        seconds before that deadline unless a renewal succeeded.
        """
        ttl = lease.ttl
        margin = min(1.0, ttl / 10)
        renew_every = ttl / 3
        group = self._group
        assert group is not None, "start() made the group"
        worker = group.spawn(_run_as, self.lifecycle, self._loop, stop)
        worker.name = f"{self.name}[singleton]"
        next_renew = time.monotonic() + renew_every
        renew_failing = False
        try:
            while True:
                deadline = lease.valid_until - margin
                worker.join(max(0.0, min(next_renew, deadline) - time.monotonic()))
                if worker.dead:
                    return  # the task is stopping
                now = time.monotonic()
                if now >= deadline:
                    logger.error("singleton DaemonTask %r: could not renew its cluster lock "
                                 "before it expires; stopping it here so that two processes "
                                 "never run it at once", self.name)
                    self._kill_worker(worker, margin)
                    return
                timer = gevent.Timeout(deadline - now)
                timer.start()
                try:
                    held = lease.renew()
                except gevent.Timeout as exc:
                    if exc is not timer:
                        raise
                    continue  # deadline reached: handled at the top of the loop
                except Exception as exc:
                    if not renew_failing:
                        logger.warning("singleton DaemonTask %r: renewing its cluster lock "
                                       "failed (%s: %s); retrying until it expires",
                                       self.name, type(exc).__name__, exc)
                        renew_failing = True
                    next_renew = time.monotonic() + min(renew_every / 3, 1.0)
                    continue
                finally:
                    timer.close()
                if not held:
                    logger.warning("singleton DaemonTask %r: lost its cluster lock (it expired "
                                   "or another process holds it); stopping it here", self.name)
                    self._kill_worker(worker, margin)
                    return
                if renew_failing:
                    logger.info("singleton DaemonTask %r: renewed its cluster lock again",
                                self.name)
                    renew_failing = False
                next_renew = time.monotonic() + renew_every
        finally:
            if worker.dead:
                try:
                    lease.release()
                except Exception as exc:  # it expires by itself
                    logger.debug("singleton DaemonTask %r: releasing the lock failed: %s",
                                 self.name, exc)
            else:  # this greenlet was killed while the worker runs: stop it too
                worker.kill(block=False)

    def _kill_worker(self, worker: Greenlet[Any, Any], timeout: float) -> None:
        worker.kill(block=True, timeout=timeout)
        if not worker.dead:
            logger.error("singleton DaemonTask %r: its greenlet ignored the kill and may still "
                         "run while another process takes over", self.name)

    def __repr__(self) -> str:
        return (
            f"<DaemonTask {self.name!r} interval={self.interval!r} "
            f"threads={self.threads}{' singleton' if self.singleton else ''} {self._state}>"
        )
