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

Rules this module keeps (see ``docs/tasks.md``):

* nothing happens at import time: no greenlet, queue or hub is created until
  something is started or deferred;
* loops wait on an event with a timeout, so ``stop()`` takes effect at once and
  idle tasks never wake up for nothing;
* every greenlet belongs to a :class:`gevent.pool.Group` owned by its task;
  ``stop(timeout)`` asks, joins up to the deadline, then kills what is left and
  logs the task's name;
* errors are logged with the task's or hook's name (``logging``, never
  ``print``); a failing task keeps running.
"""
import contextlib
import contextvars
import itertools
import logging
import time

import gevent
from gevent.event import Event
from gevent.lock import RLock
from gevent.pool import Group
from gevent.queue import Queue

from sbio.errors import LifecycleError, QueueFull, SbioError, SbioTimeoutError  # noqa: F401

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
]

logger = logging.getLogger("sbio.tasks")  # one logger for the whole package, as documented

#: Priority of hooks registered without one. Lower runs first.
DEFAULT_PRIORITY = 50

_STOPPED, _STARTING, _RUNNING, _STOPPING = "stopped", "starting", "running", "stopping"

# The Lifecycle whose task, caller or hook runs in this greenlet: set at the top
# of each task/caller greenlet (a new greenlet starts with an empty context) and
# around each hook call. sbio.live.notify() reads it to find its server(s).
_current_lifecycle = contextvars.ContextVar("sbio_current_lifecycle", default=None)


def current_lifecycle():
    """The :class:`Lifecycle` whose task, caller or hook is running in this greenlet, or None."""
    return _current_lifecycle.get()


def _run_as(lifecycle, func, *args):
    """Call *func* in this (new) greenlet with *lifecycle* as its current lifecycle."""
    _current_lifecycle.set(lifecycle)
    return func(*args)


def default_waiter(event, timeout):
    """Wait until *event* is set or *timeout* seconds pass; return ``True`` if set.

    The signature every waiter has. :class:`DaemonTask` waits between calls
    through ``task.waiter or task.lifecycle.waiter``; tests swap in a fake
    clock (``sbio.testing.FakeClock.wait``) to count runs without sleeping.
    """
    return bool(event.wait(timeout))


def _qualname(func):
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        return repr(func)
    return f"{module}.{name}" if module else name


def _remaining(deadline):
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


# --------------------------------------------------------------------------
# Services: the common machinery of DaemonTask and the callers
# --------------------------------------------------------------------------


class _Service:
    """Greenlets owned by one :class:`gevent.pool.Group`, started and stopped together."""

    #: What log messages call this kind of service.
    kind = "service"
    #: Seconds ``stop()`` waits for killed greenlets to die before abandoning them.
    kill_timeout = 1.0

    def __init__(self, name, threads, lifecycle):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"{type(self).__name__} threads must be an int >= 1, got {threads!r}")
        self.name = name
        self.threads = threads
        self.lifecycle = _default_lifecycle() if lifecycle is None else lifecycle
        self._state = _STOPPED
        self._group = None  # created by start(): a fresh Group per run
        self._stop_started = None
        self._killed = False
        self._abandoned = []  # greenlets that survived a kill, still ours to report

    @property
    def running(self):
        """``True`` between :meth:`start` and :meth:`stop`."""
        return self._state == _RUNNING

    def greenlets(self):
        """The live greenlets this service owns: empty once it stopped, unless
        some survived a kill (those were logged and stay listed here)."""
        self._abandoned = [g for g in self._abandoned if not g.dead]
        return self._live() + self._abandoned

    def _live(self):
        if self._group is None:
            return []
        return [g for g in list(self._group) if not g.dead]

    def start(self):
        """Spawn the greenlets. Does nothing if already running."""
        if self._state == _RUNNING:
            return
        if self._state == _STOPPING:
            raise LifecycleError(f"{self.kind} {self.name!r} is stopping; start it after stop() returns")
        self._group = Group()  # made here, not in __init__: a Group needs the hub
        self._killed = False
        self._state = _RUNNING
        self._on_start()
        for i in range(self.threads):
            greenlet = self._group.spawn(_run_as, self.lifecycle, self._run_greenlet)
            greenlet.name = f"{self.name}[{i}]" if self.threads > 1 else self.name
        logger.debug("%s %r started with %d greenlet(s)", self.kind, self.name, self.threads)

    def stop(self, timeout=5):
        """Stop: ask, wait up to *timeout* seconds, then kill what is left.

        Greenlets still running at the deadline are killed and a warning naming
        this service is logged. ``timeout=None`` waits as long as it takes.

        :return: ``True`` if every greenlet ended by itself (or it was not
            running), ``False`` if some had to be killed.
        """
        if self._state == _STOPPED:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._state == _RUNNING:
            self._signal_stop()
        self._join(deadline)
        killing = self._kill_leftovers()
        if killing:
            gevent.joinall(killing, timeout=self.kill_timeout)
        return self._finish_stop()

    # The steps of stop(), separate so Lifecycle.stop can stop every service
    # against one shared deadline.

    def _signal_stop(self):
        self._state = _STOPPING
        self._stop_started = time.monotonic()
        self._on_signal_stop()

    def _others(self):
        current = gevent.getcurrent()
        # A service's own greenlet may call stop() (e.g. a task that shuts the
        # server down): never join or kill the caller, it ends by itself.
        return [g for g in self._live() if g is not current]

    def _join(self, deadline):
        others = self._others()
        if others:
            gevent.joinall(others, timeout=_remaining(deadline))

    def _kill_leftovers(self):
        leftovers = self._others()
        if not leftovers:
            return []
        self._killed = True
        waited = time.monotonic() - (self._stop_started or time.monotonic())
        logger.warning(
            "%s %r did not stop within %.1f s; killing %d greenlet(s)",
            self.kind, self.name, waited, len(leftovers),
        )
        for greenlet in leftovers:
            greenlet.kill(block=False)
        return leftovers

    def _finish_stop(self):
        survivors = self._others()
        if survivors:
            logger.error(
                "%s %r: %d greenlet(s) ignored GreenletExit and were abandoned: %s",
                self.kind, self.name, len(survivors), ", ".join(repr(g) for g in survivors),
            )
            self._abandoned.extend(survivors)
        clean = not self._killed
        self._state = _STOPPED
        self._on_stopped()
        logger.debug("%s %r stopped", self.kind, self.name)
        return clean

    # Hooks for subclasses.
    def _on_start(self):
        pass

    def _on_signal_stop(self):
        pass

    def _on_stopped(self):
        pass

    def _run_greenlet(self):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} {self._state}>"


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

    def __init__(self, func, interval=None, threads=1, name=None, *, lifecycle=None, waiter=None,
                 singleton=False):
        if not callable(func):
            raise TypeError(f"DaemonTask needs a callable, got {func!r}")
        if interval is not None:
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
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
        self.lifecycle._register(self)

    @property
    def stopped(self):
        """This run's stop event: set when the task is stopping or stopped."""
        return self._stop_event

    def run_once(self):
        """Call *func* once in the current greenlet, exactly as the loop does.

        An exception is logged with the task's name and returned (not raised);
        ``None`` means the call succeeded. The ``sbio_run_task_once`` fixture wraps
        this and re-raises by default.
        """
        try:
            self.func()
        except Exception as exc:
            logger.exception("DaemonTask %r raised; it keeps running", self.name)
            return exc
        return None

    def _wait(self, event, timeout):
        waiter = self.waiter or self.lifecycle.waiter
        return waiter(event, timeout)

    def _on_start(self):
        # A new event per run: a greenlet abandoned by an earlier stop keeps
        # seeing its own (set) event and never rejoins the loop.
        self._stop_event = Event()

    def _on_signal_stop(self):
        self._stop_event.set()

    def _run_greenlet(self):
        if self.singleton:
            self._run_singleton(self._stop_event)
        else:
            self._loop(self._stop_event)

    def _loop(self, stop):
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

    def _run_singleton(self, stop):
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

    def _hold(self, lease, stop):
        """Run the loop in a worker greenlet while renewing *lease*; release it after.

        The lease is valid until ``lease.valid_until`` (a time.monotonic()
        deadline computed from when the request was sent, so it ends before
        the lock expires in the backend). The worker is killed *margin*
        seconds before that deadline unless a renewal succeeded.
        """
        ttl = lease.ttl
        margin = min(1.0, ttl / 10)
        renew_every = ttl / 3
        worker = self._group.spawn(_run_as, self.lifecycle, self._loop, stop)
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

    def _kill_worker(self, worker, timeout):
        worker.kill(block=True, timeout=timeout)
        if not worker.dead:
            logger.error("singleton DaemonTask %r: its greenlet ignored the kill and may still "
                         "run while another process takes over", self.name)

    def __repr__(self):
        return (
            f"<DaemonTask {self.name!r} interval={self.interval!r} "
            f"threads={self.threads}{' singleton' if self.singleton else ''} {self._state}>"
        )


_STOP = object()  # queue sentinel: one per worker, put by stop()


class _CallerBase(_Service):
    kind = "Caller"

    def __init__(self, name, threads, max_queue, lifecycle):
        if max_queue is not None and (
            isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1
        ):
            raise ValueError(f"{type(self).__name__} max_queue must be None or an int >= 1, got {max_queue!r}")
        super().__init__(name, threads, lifecycle)
        self.max_queue = max_queue
        self._queue = None  # a gevent Queue, made on first use (it needs a hub)
        self._queued = 0  # calls waiting in the queue (sentinels excluded)
        self._pending = 0  # queued + running
        self._idle = Event()
        self._idle.set()
        self.lifecycle._register(self)

    def qsize(self):
        """How many deferred calls wait in the queue (not counting running ones)."""
        return self._queued

    def join(self, timeout=None):
        """Wait until every deferred call has finished; ``True`` if they did in time."""
        return bool(self._idle.wait(timeout))

    def _get_queue(self):
        if self._queue is None:
            # Made on first use, not in __init__ (a Queue needs the hub).
            # Unbounded underneath: _put enforces max_queue, so stop() can
            # always add its sentinels.
            self._queue = Queue()
        return self._queue

    def _put(self, func, args, kwargs):
        q = self._get_queue()
        if self.max_queue is not None and self._queued >= self.max_queue:
            raise QueueFull(
                f"{self.kind} {self.name!r} has {self._queued} calls queued "
                f"(max_queue={self.max_queue}); it is not keeping up or not running"
            )
        self._queued += 1
        self._pending += 1
        self._idle.clear()
        q.put((func, args, kwargs))

    def _run_greenlet(self):
        q = self._get_queue()
        while True:
            item = q.get()  # blocks without polling; stop() wakes us with _STOP
            if item is _STOP:
                return
            self._queued -= 1
            func, args, kwargs = item
            try:
                func(*args, **kwargs)
            except Exception:
                logger.exception("%s %r: deferred call %s raised", self.kind, self.name, _qualname(func))
            finally:
                self._pending = max(0, self._pending - 1)
                if self._pending == 0:
                    self._idle.set()

    def _on_signal_stop(self):
        # Workers finish what was deferred before stop() and then exit; calls
        # deferred while stopping stay queued for the next start.
        q = self._get_queue()
        for _ in range(len(self._live())):
            q.put(_STOP)

    def _on_stopped(self):
        q = self._get_queue()
        kept = []
        while not q.empty():
            item = q.get_nowait()
            if item is not _STOP:
                kept.append(item)
        for item in kept:
            q.put(item)
        # Calls interrupted by a kill were neither finished nor requeued.
        self._pending = self._queued = len(kept)
        if self._pending == 0:
            self._idle.set()
        if kept:
            logger.warning(
                "%s %r stopped with %d deferred call(s) still queued; they run when it starts again",
                self.kind, self.name, len(kept),
            )


class GenericCaller(_CallerBase):
    """Greenlet workers that run any deferred call: ``caller.defer(func, *args, **kw)``.

    :param threads: number of worker greenlets (calls run concurrently up to this).
    :param max_queue: most calls that may wait in the queue; :meth:`defer`
        raises :class:`QueueFull` beyond it. ``None`` means unbounded (avoid).
    :param name: used in logs; defaults to ``"GenericCaller"``.
    :param lifecycle: see :class:`DaemonTask`.

    Calls may be deferred before the caller starts; they run once it does.
    Workers block on the queue (no polling). An exception from a call is
    logged and the worker goes on. ``stop(timeout)`` lets the workers finish
    the calls already queued, up to the deadline.
    """

    kind = "GenericCaller"

    def __init__(self, threads=1, max_queue=1000, name=None, *, lifecycle=None):
        super().__init__(name or "GenericCaller", threads, max_queue, lifecycle)

    def defer(self, func, /, *args, **kwargs):
        """Queue ``func(*args, **kwargs)`` and return at once (raises :class:`QueueFull`)."""
        if not callable(func):
            raise TypeError(f"GenericCaller.defer needs a callable, got {func!r}")
        self._put(func, args, kwargs)


class Caller(_CallerBase):
    """Greenlet workers calling one function: ``caller.defer(*args, **kw)``.

    ::

        mailer = Caller(send_mail, threads=4)
        mailer.defer(to, body)          # returns at once

    Same parameters and behaviour as :class:`GenericCaller`, with *func* fixed;
    *name* defaults to the function's qualified name.
    """

    kind = "Caller"

    def __init__(self, func, threads=1, max_queue=1000, name=None, *, lifecycle=None):
        if not callable(func):
            raise TypeError(f"Caller needs a callable, got {func!r}")
        self.func = func
        super().__init__(name or _qualname(func), threads, max_queue, lifecycle)

    def defer(self, /, *args, **kwargs):
        """Queue ``func(*args, **kwargs)`` and return at once (raises :class:`QueueFull`)."""
        self._put(self.func, args, kwargs)


# --------------------------------------------------------------------------
# Hooks and the lifecycle
# --------------------------------------------------------------------------


class _Component:
    """What one add_hooks() call registered: a startup hook, the shutdown hook
    that undoes it, or both."""

    __slots__ = ("key", "has_startup", "started")

    def __init__(self, key, has_startup):
        self.key = key
        self.has_startup = has_startup
        self.started = False

    @property
    def shutdown_due(self):
        # A shutdown hook undoes its own startup hook only; alone, it is always due.
        return self.started or not self.has_startup


class _Hook:
    __slots__ = ("func", "priority", "seq", "name", "component")

    def __init__(self, func, priority, seq, name, component):
        self.func = func
        self.priority = priority
        self.seq = seq
        self.name = name
        self.component = component

    @property
    def order(self):
        return (self.priority, self.seq)


def _check_priority(priority):
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise TypeError(f"hook priority must be a number, got {priority!r}")


class Lifecycle:
    """Startup and shutdown hooks, daemon tasks and callers, started and stopped together.

    The server calls :meth:`start` when it starts and :meth:`stop` when it
    stops; :data:`lifecycle` is the process-wide instance that
    :func:`on_startup`, :func:`on_shutdown`, :class:`DaemonTask` and the
    callers use by default. Independent instances are for tests and embedding.

    Start, in order: clear :attr:`stopped`; run the startup hooks, lowest
    priority first (ties in registration order); start every task and caller.
    Stop, in order: set :attr:`stopped`; stop every task and caller against one
    deadline (join, then kill and log); run the shutdown hooks, lowest priority
    first. Both are idempotent, and a stopped lifecycle can start again.

    Also a context manager: ``with lifecycle: ...`` starts and stops it.

    :param waiter: default waiter for its daemon tasks (see :func:`default_waiter`).
    :param name: used in log messages.
    """

    #: Seconds each shutdown hook gets at least, even once the stop deadline passed.
    min_hook_timeout = 1.0
    #: Seconds stop() waits for killed greenlets to die.
    kill_timeout = 1.0
    #: Seconds the shutdown hooks get when a failed start-up is rolled back.
    abort_timeout = 10.0

    def __init__(self, waiter=None, name="lifecycle"):
        self.name = name
        #: Set while not running: cleared when start() begins, set when stop() begins.
        self.stopped = Event()
        self.stopped.set()
        #: ``waiter(event, timeout) -> bool`` used by tasks that have none of their own.
        self.waiter = waiter or default_waiter
        #: What singleton DaemonTasks lock with (``None``: they run in this process).
        #: The server sets it to a Redis lock when ``server.message_queue`` is set;
        #: see :class:`sbio.cluster.RedisLocks` for the interface.
        self.lock_backend = None
        self._startup = []
        self._shutdown = []
        self._services = []
        self._components = {}  # key -> _Component, for add_hooks(key=...)
        self._seq = itertools.count()
        self._state = _STOPPED
        self._lock = RLock()  # serialises start() and stop() across greenlets
        self._starter = None

    # -- state -------------------------------------------------------------

    @property
    def state(self):
        """One of ``"stopped"``, ``"starting"``, ``"running"``, ``"stopping"``."""
        return self._state

    @property
    def running(self):
        """``True`` once start() finished and until stop() begins."""
        return self._state == _RUNNING

    @property
    def services(self):
        """The registered tasks and callers, in registration order."""
        return list(self._services)

    # -- registration ------------------------------------------------------

    def on_startup(self, func=None, priority=DEFAULT_PRIORITY):
        """Register *func* to run at start-up. Works as ``@on_startup``,
        ``@on_startup(priority=40)`` or ``on_startup(func, 40)``; returns *func*.

        Registered while the lifecycle runs, *func* runs at once (a failure
        raises :class:`LifecycleError` to the caller).
        """
        return self._decorate("on_startup", func, priority, startup=True)

    def on_shutdown(self, func=None, priority=DEFAULT_PRIORITY):
        """Register *func* to run at shutdown, lowest priority first; same forms
        as :meth:`on_startup`. A failing shutdown hook is logged and the others
        still run."""
        return self._decorate("on_shutdown", func, priority, startup=False)

    def _decorate(self, what, func, priority, startup):
        _check_priority(priority)
        if func is None:
            return lambda f: self._decorate(what, f, priority, startup)
        if not callable(func):
            raise TypeError(
                f"{what}() takes a function, got {func!r}; "
                f"to give a priority write @{what}(priority={func!r})"
            )
        if startup:
            self.add_hooks(startup=func, priority=priority)
        else:
            self.add_hooks(shutdown=func, priority=priority)
        return func

    def add_hooks(self, startup=None, shutdown=None, priority=DEFAULT_PRIORITY, *, key=None, name=None):
        """Register a component: a startup hook and the shutdown hook that undoes it.

        The pair matters when start-up fails: *shutdown* then runs only if
        *startup* had run successfully. (A shutdown hook registered alone
        always runs at stop, including after a failed start.)

        :param startup: called with no arguments at start-up, or ``None``.
        :param shutdown: called with no arguments at shutdown, or ``None``.
        :param priority: position of both hooks in their phase, lower first.
        :param key: any hashable; registering again with the same key replaces
            the earlier pair instead of adding a second one (the server uses
            the Namespace class, so each class's hooks run once per start
            however many servers are built). See :meth:`remove_hooks`.
        :param name: used in logs and errors; defaults to the functions' names.
        """
        _check_priority(priority)
        for func in (startup, shutdown):
            if func is not None and not callable(func):
                raise TypeError(f"add_hooks() needs callables or None, got {func!r}")
        if key is not None:
            self.remove_hooks(key)
        component = _Component(key, has_startup=startup is not None)
        if key is not None:
            self._components[key] = component
        if shutdown is not None:
            self._shutdown.append(
                _Hook(shutdown, priority, next(self._seq), name or _qualname(shutdown), component)
            )
        if startup is not None:
            hook = _Hook(startup, priority, next(self._seq), name or _qualname(startup), component)
            self._startup.append(hook)
            if self._state == _RUNNING:
                self._run_startup_hook(hook)

    def has_hooks(self, key):
        """Whether hooks registered with ``add_hooks(..., key=key)`` are here."""
        return key in self._components

    def remove_hooks(self, key):
        """Forget the hooks registered with ``add_hooks(..., key=key)``; ``True`` if any were."""
        component = self._components.pop(key, None)
        if component is None:
            return False
        self._startup = [h for h in self._startup if h.component is not component]
        self._shutdown = [h for h in self._shutdown if h.component is not component]
        return True

    def _register(self, service):
        """Called by DaemonTask and the callers' constructors."""
        self._services.append(service)
        if self._state == _RUNNING:
            service.start()

    def discard(self, service):
        """Stop *service* (a task or caller) and forget it; ``True`` if it was registered."""
        try:
            self._services.remove(service)
        except ValueError:
            return False
        service.stop()
        return True

    # -- start -------------------------------------------------------------

    def start(self):
        """Run the startup hooks by priority, then start every task and caller.

        Does nothing if already running (or starting). If a startup hook
        raises, start-up stops there: the shutdown hooks that are due run
        (every shutdown hook registered alone, and the paired ones whose
        startup hook succeeded), :attr:`stopped` is set again, and
        :class:`LifecycleError` naming the hook is raised from the original
        exception. No task has started at that point.
        """
        with self._lock:
            if self._state != _STOPPED:
                return
            self._state = _STARTING
            self._starter = gevent.getcurrent()
            self.stopped.clear()
            for hook in self._startup:
                hook.component.started = False
            done = set()
            try:
                while True:
                    # Re-read each time: a hook may register more hooks.
                    pending = [h for h in self._startup if h.seq not in done]
                    if not pending:
                        break
                    hook = min(pending, key=lambda h: h.order)
                    done.add(hook.seq)
                    self._run_startup_hook(hook)
            except BaseException as exc:
                self._abort_start(exc)
                raise
            finally:
                self._starter = None
            self._state = _RUNNING
            for service in list(self._services):
                service.start()
            logger.info(
                "%s started: %d startup hook(s), %d task(s)/caller(s)",
                self.name, len(done), len(self._services),
            )

    def _run_startup_hook(self, hook):
        logger.debug("%s: startup hook %s (priority %s)", self.name, hook.name, hook.priority)
        token = _current_lifecycle.set(self)
        try:
            hook.func()
        except Exception as exc:
            raise LifecycleError(
                f"startup hook {hook.name} (priority {hook.priority}) failed: "
                f"{type(exc).__name__}: {exc}",
                hook=hook.name,
            ) from exc
        finally:
            _current_lifecycle.reset(token)
        hook.component.started = True

    def _abort_start(self, exc):
        hook = getattr(exc, "hook", None)
        logger.error("%s: start-up aborted%s; running the due shutdown hooks",
                     self.name, f" by startup hook {hook}" if hook else "")
        self._state = _STOPPING
        self.stopped.set()
        try:
            errors = self._run_shutdown_hooks(deadline=time.monotonic() + self.abort_timeout)
        finally:
            self._state = _STOPPED
        if isinstance(exc, LifecycleError):
            exc.shutdown_errors.extend(errors)
            exc.args = (exc.args[0] + "; start-up aborted",)

    # -- stop --------------------------------------------------------------

    def stop(self, timeout=10):
        """Set :attr:`stopped`, stop every task and caller, run the shutdown hooks.

        Tasks and callers are all asked to stop at once and joined against
        one deadline *timeout* seconds away; greenlets still running then are
        killed (waiting up to :attr:`kill_timeout`) and logged by task name.
        Shutdown hooks then run lowest priority first, each bounded by the
        time left (at least :attr:`min_hook_timeout`); an exception or
        timeout in one is logged and the others still run. ``timeout=None``
        waits without bound. Idempotent: stopping a stopped lifecycle does
        nothing. Called from another greenlet during start(), it sets
        :attr:`stopped` at once and stops as soon as start() returns.

        :return: ``(hook name, exception)`` for each shutdown hook that failed.
        """
        if self._state == _STARTING and self._starter is gevent.getcurrent():
            raise LifecycleError(
                "stop() called from a startup hook; raise an exception from the hook to abort start-up"
            )
        self.stopped.set()
        with self._lock:
            if self._state != _RUNNING:
                return []  # stopped already, or stop() re-entered from a shutdown hook
            self._state = _STOPPING
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                self._stop_services(deadline)
                return self._run_shutdown_hooks(deadline)
            finally:
                self._state = _STOPPED
                logger.info("%s stopped", self.name)

    def _stop_services(self, deadline):
        services = [s for s in self._services if s._state != _STOPPED]
        for service in services:
            if service._state == _RUNNING:
                service._signal_stop()
        for service in services:
            service._join(deadline)
        killing = []
        for service in services:
            killing.extend(service._kill_leftovers())
        if killing:
            gevent.joinall(killing, timeout=self.kill_timeout)
        for service in services:
            try:
                service._finish_stop()
            except Exception:
                logger.exception("%s: error while stopping %r", self.name, service)

    def _run_shutdown_hooks(self, deadline):
        due = [h for h in self._shutdown if h.component.shutdown_due]
        errors = []
        fatal = None
        for hook in sorted(due, key=lambda h: h.order):
            budget = _remaining(deadline)
            if budget is not None:
                budget = max(budget, self.min_hook_timeout)
            timer = gevent.Timeout(budget)
            timer.start()
            token = _current_lifecycle.set(self)
            try:
                logger.debug("%s: shutdown hook %s (priority %s)", self.name, hook.name, hook.priority)
                hook.func()
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                error = SbioTimeoutError(f"shutdown hook {hook.name} did not return within {budget:.1f} s")
                logger.error("%s: %s", self.name, error)
                errors.append((hook.name, error))
            except Exception as exc:
                logger.exception("%s: shutdown hook %s raised; running the others", self.name, hook.name)
                errors.append((hook.name, exc))
            except BaseException as exc:  # KeyboardInterrupt, SystemExit...: finish, then re-raise
                logger.error("%s: shutdown hook %s raised %s", self.name, hook.name, type(exc).__name__)
                errors.append((hook.name, exc))
                fatal = fatal or exc
            finally:
                _current_lifecycle.reset(token)
                timer.close()
        if fatal is not None:
            raise fatal
        return errors

    # -- context manager and test support -----------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()
        return False

    @contextlib.contextmanager
    def isolated(self, timeout=5):
        """Set the registrations aside for a test, and put them back afterwards.

        Inside the block this lifecycle has no hooks, tasks or callers and the
        default waiter; leaving the block stops it (with *timeout*) and
        restores what was registered before. The object itself (and
        :attr:`stopped`) stays the same, so references imported elsewhere keep
        working. Refuses to isolate a running lifecycle.
        """
        with self._lock:
            if self._state != _STOPPED:
                raise LifecycleError(
                    f"{self.name} is {self._state}; stop it (or the server that runs it) "
                    "before isolating it, or use a separate Lifecycle()"
                )
            saved = (self._startup, self._shutdown, self._services, self._components, self.waiter)
            self._startup, self._shutdown, self._services, self._components = [], [], [], {}
            self.waiter = default_waiter
        try:
            yield self
        finally:
            try:
                self.stop(timeout)
                for service in self._services:
                    service.stop(timeout)  # also those started by hand
            finally:
                (self._startup, self._shutdown, self._services, self._components, self.waiter) = saved

    def __repr__(self):
        return (
            f"<Lifecycle {self.name!r} {self._state}: {len(self._startup)} startup, "
            f"{len(self._shutdown)} shutdown hook(s), {len(self._services)} task(s)/caller(s)>"
        )


#: The module-level lifecycle: the application's declarations. The
#: registration functions below and every task and caller use it by default;
#: a Server made without ``lifecycle=`` starts it (unless it runs already) and
#: stops it only if that server was the one that started it.
lifecycle = Lifecycle()

#: Set while the server is not running (cleared on start, set when stop begins).
#: Long-running code checks it: ``while not stopped.is_set(): ...``, or waits on
#: it: ``stopped.wait(60)`` returns early when the server stops.
stopped = lifecycle.stopped


def _default_lifecycle():
    return lifecycle


def on_startup(func=None, priority=DEFAULT_PRIORITY):
    """Register *func* to run when the server starts (see :meth:`Lifecycle.on_startup`).

    ::

        @on_startup(priority=40)
        def warm_cache(): ...
    """
    return lifecycle.on_startup(func, priority)


def on_shutdown(func=None, priority=DEFAULT_PRIORITY):
    """Register *func* to run when the server stops (see :meth:`Lifecycle.on_shutdown`)."""
    return lifecycle.on_shutdown(func, priority)
