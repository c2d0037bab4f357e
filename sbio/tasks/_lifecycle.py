""":class:`Lifecycle`: startup and shutdown hooks, daemon tasks and callers,
started and stopped together; and what tasks and callers share with it
(their states, :func:`current_lifecycle`, :func:`default_waiter`).

Named ``_lifecycle`` because ``sbio.tasks.lifecycle`` is the module-level
Lifecycle instance (see :mod:`sbio.tasks.hooks`).
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Literal, Protocol, TypeVar, overload

import gevent
from gevent.event import Event
from gevent.greenlet import Greenlet
from gevent.lock import RLock

from sbio.errors import LifecycleError, SbioTimeoutError

#: What Lifecycle.start(context=...) takes: makes the context each hook, task run and
#: deferred call runs inside (the server's Flask ``app.app_context``).
ContextFactory = Callable[[], contextlib.AbstractContextManager[Any]]

logger = logging.getLogger("sbio.tasks")  # one logger for the whole package, as documented


#: Priority of hooks registered without one. Lower runs first.
DEFAULT_PRIORITY = 50

_STOPPED, _STARTING, _RUNNING, _STOPPING = "stopped", "starting", "running", "stopping"

#: ``waiter(event, timeout) -> bool``: wait until *event* is set or *timeout*
#: seconds pass (``None``: no limit); ``True`` if it was set. See :func:`default_waiter`.
Waiter = Callable[[Event, "float | None"], bool]
#: A startup or shutdown hook: called with no arguments, its result ignored.
Hook = Callable[[], object]
_H = TypeVar("_H", bound=Hook)


class Lease(Protocol):
    """A held cluster lock, as :meth:`LockBackend.acquire` returns it."""

    @property
    def ttl(self) -> float:
        """Seconds the lock lives without renewal."""
        ...

    #: ``time.monotonic()`` deadline: the lock is ours until then unless renewed
    valid_until: float

    def renew(self) -> bool:
        """Extend the lock by its ttl; ``False``: it was lost."""
        ...

    def release(self) -> None:
        """Give the lock up."""
        ...


class LockBackend(Protocol):
    """What singleton DaemonTasks lock with (:attr:`Lifecycle.lock_backend`);
    :class:`sbio.cluster.RedisLocks` is the implementation."""

    ttl: float

    def acquire(self, name: str) -> tuple[Lease | None, float]:
        """``(lease, retry_after)``: *lease* is ``None`` when another process
        holds the lock; try again in *retry_after* seconds."""
        ...


class _Managed(Protocol):
    """What a Lifecycle needs of a task or caller (see ``sbio.tasks.service``)."""

    _state: str

    def start(self) -> None: ...
    def stop(self, timeout: float | None = ...) -> bool: ...
    def _signal_stop(self) -> None: ...
    def _join(self, deadline: float | None) -> None: ...
    def _kill_leftovers(self) -> list[Greenlet[Any, Any]]: ...
    def _finish_stop(self) -> bool: ...

# The Lifecycle whose task, caller or hook runs in this greenlet: set at the top
# of each task/caller greenlet (a new greenlet starts with an empty context) and
# around each hook call. sbio.live.notify() reads it to find its server(s).
_current_lifecycle: contextvars.ContextVar[Lifecycle | None] = contextvars.ContextVar(
    "sbio_current_lifecycle", default=None)


def current_lifecycle() -> Lifecycle | None:
    """The :class:`Lifecycle` whose task, caller or hook is running in this greenlet, or None."""
    return _current_lifecycle.get()


def _run_as(lifecycle: Lifecycle, func: Callable[..., object], *args: object) -> object:
    """Call *func* in this (new) greenlet with *lifecycle* as its current lifecycle."""
    _current_lifecycle.set(lifecycle)
    return func(*args)


def default_waiter(event: Event, timeout: float | None) -> bool:
    """Wait until *event* is set or *timeout* seconds pass; return ``True`` if set.

    The signature every waiter has. :class:`DaemonTask` waits between calls
    through ``task.waiter or task.lifecycle.waiter``; tests swap in a fake
    clock (``sbio.testing.FakeClock.wait``) to count runs without sleeping.
    """
    return bool(event.wait(timeout))


def _qualname(func: object) -> str:
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        return repr(func)
    return f"{module}.{name}" if module else name


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


class _Component:
    """What one add_hooks() call registered: a startup hook, the shutdown hook
    that undoes it, or both."""

    __slots__ = ("key", "has_startup", "started")

    def __init__(self, key: Hashable | None, has_startup: bool) -> None:
        self.key = key
        self.has_startup = has_startup
        self.started = False

    @property
    def shutdown_due(self) -> bool:
        # A shutdown hook undoes its own startup hook only; alone, it is always due.
        return self.started or not self.has_startup


class _Hook:
    __slots__ = ("func", "priority", "seq", "name", "component")

    def __init__(self, func: Hook, priority: float, seq: int, name: str,
                 component: _Component) -> None:
        self.func = func
        self.priority = priority
        self.seq = seq
        self.name = name
        self.component = component

    @property
    def order(self) -> tuple[float, int]:
        return (self.priority, self.seq)


def _check_priority(priority: object) -> None:
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

    def __init__(self, waiter: Waiter | None = None, name: str = "lifecycle") -> None:
        self.name = name
        #: Set while not running: cleared when start() begins, set when stop() begins.
        self.stopped = Event()
        self.stopped.set()
        #: ``waiter(event, timeout) -> bool`` used by tasks that have none of their own.
        self.waiter = waiter or default_waiter
        #: What singleton DaemonTasks lock with (``None``: they run in this process).
        #: The server sets it to a Redis lock when ``server.message_queue`` is set;
        #: see :class:`sbio.cluster.RedisLocks` for the interface.
        self.lock_backend: LockBackend | None = None
        self._startup: list[_Hook] = []
        self._shutdown: list[_Hook] = []
        self._services: list[_Managed] = []
        # key -> _Component, for add_hooks(key=...)
        self._components: dict[Hashable, _Component] = {}
        self._seq = itertools.count()
        self._state = _STOPPED
        self._lock = RLock()  # serialises start() and stop() across greenlets
        self._starter: object | None = None
        self._context: ContextFactory | None = None

    def in_context(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` inside the context given to :meth:`start` (if any).

        What every hook call, DaemonTask run and deferred call goes through;
        with :class:`sbio.Server` that is its Flask app context.
        """
        context = self._context
        if context is None:
            return func(*args, **kwargs)
        with context():
            return func(*args, **kwargs)

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> str:
        """One of ``"stopped"``, ``"starting"``, ``"running"``, ``"stopping"``."""
        return self._state

    @property
    def running(self) -> bool:
        """``True`` once start() finished and until stop() begins."""
        return self._state == _RUNNING

    @property
    def services(self) -> list[_Managed]:
        """The registered tasks and callers, in registration order."""
        return list(self._services)

    # -- registration ------------------------------------------------------

    @overload
    def on_startup(self, func: _H, priority: float = DEFAULT_PRIORITY) -> _H: ...
    @overload
    def on_startup(self, func: None = None,
                   priority: float = DEFAULT_PRIORITY) -> Callable[[_H], _H]: ...
    def on_startup(self, func: _H | None = None,
                   priority: float = DEFAULT_PRIORITY) -> _H | Callable[[_H], _H]:
        """Register *func* to run at start-up. Works as ``@on_startup``,
        ``@on_startup(priority=40)`` or ``on_startup(func, 40)``; returns *func*.

        Registered while the lifecycle runs, *func* runs at once (a failure
        raises :class:`LifecycleError` to the caller).
        """
        return self._decorate("on_startup", func, priority, startup=True)

    @overload
    def on_shutdown(self, func: _H, priority: float = DEFAULT_PRIORITY) -> _H: ...
    @overload
    def on_shutdown(self, func: None = None,
                    priority: float = DEFAULT_PRIORITY) -> Callable[[_H], _H]: ...
    def on_shutdown(self, func: _H | None = None,
                    priority: float = DEFAULT_PRIORITY) -> _H | Callable[[_H], _H]:
        """Register *func* to run at shutdown, lowest priority first; same forms
        as :meth:`on_startup`. A failing shutdown hook is logged and the others
        still run."""
        return self._decorate("on_shutdown", func, priority, startup=False)

    def _decorate(self, what: str, func: _H | None, priority: float,
                  startup: bool) -> _H | Callable[[_H], _H]:
        _check_priority(priority)
        if func is None:
            def decorator(f: _H) -> _H:
                self._decorate(what, f, priority, startup)
                return f
            return decorator
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

    def add_hooks(self, startup: Hook | None = None, shutdown: Hook | None = None,
                  priority: float = DEFAULT_PRIORITY, *, key: Hashable | None = None,
                  name: str | None = None) -> None:
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

    def has_hooks(self, key: Hashable) -> bool:
        """Whether hooks registered with ``add_hooks(..., key=key)`` are here."""
        return key in self._components

    def remove_hooks(self, key: Hashable) -> bool:
        """Forget the hooks registered with ``add_hooks(..., key=key)``; ``True`` if any were."""
        component = self._components.pop(key, None)
        if component is None:
            return False
        self._startup = [h for h in self._startup if h.component is not component]
        self._shutdown = [h for h in self._shutdown if h.component is not component]
        return True

    def _register(self, service: _Managed) -> None:
        """Called by DaemonTask and the callers' constructors."""
        self._services.append(service)
        if self._state == _RUNNING:
            service.start()

    def discard(self, service: _Managed) -> bool:
        """Stop *service* (a task or caller) and forget it; ``True`` if it was registered."""
        try:
            self._services.remove(service)
        except ValueError:
            return False
        service.stop()
        return True

    # -- start -------------------------------------------------------------

    def start(self, context: ContextFactory | None = None) -> None:
        """Run the startup hooks by priority, then start every task and caller.

        Does nothing if already running (or starting). If a startup hook
        raises, start-up stops there: the shutdown hooks that are due run
        (every shutdown hook registered alone, and the paired ones whose
        startup hook succeeded), :attr:`stopped` is set again, and
        :class:`LifecycleError` naming the hook is raised from the original
        exception. No task has started at that point.

        :param context: makes the context manager that each hook call, each
            run of a DaemonTask's function and each deferred call runs
            inside, until the lifecycle has stopped (:meth:`in_context`).
            :class:`sbio.Server` passes its Flask app's ``app_context``.
        """
        with self._lock:
            if self._state != _STOPPED:
                return
            self._context = context
            self._state = _STARTING
            self._starter = gevent.getcurrent()
            self.stopped.clear()
            for hook in self._startup:
                hook.component.started = False
            done: set[int] = set()
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

    def _run_startup_hook(self, hook: _Hook) -> None:
        logger.debug("%s: startup hook %s (priority %s)", self.name, hook.name, hook.priority)
        token = _current_lifecycle.set(self)
        try:
            self.in_context(hook.func)
        except Exception as exc:
            raise LifecycleError(
                f"startup hook {hook.name} (priority {hook.priority}) failed: "
                f"{type(exc).__name__}: {exc}",
                hook=hook.name,
            ) from exc
        finally:
            _current_lifecycle.reset(token)
        hook.component.started = True

    def _abort_start(self, exc: BaseException) -> None:
        hook = getattr(exc, "hook", None)
        logger.error("%s: start-up aborted%s; running the due shutdown hooks",
                     self.name, f" by startup hook {hook}" if hook else "")
        self._state = _STOPPING
        self.stopped.set()
        try:
            errors = self._run_shutdown_hooks(deadline=time.monotonic() + self.abort_timeout)
        finally:
            self._state = _STOPPED
            self._context = None
        if isinstance(exc, LifecycleError):
            exc.shutdown_errors.extend(errors)
            exc.args = (exc.args[0] + "; start-up aborted",)

    # -- stop --------------------------------------------------------------

    def stop(self, timeout: float | None = 10) -> list[tuple[str, BaseException]]:
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
                "stop() called from a startup hook; "
                "raise an exception from the hook to abort start-up"
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
                self._context = None
                logger.info("%s stopped", self.name)

    def _stop_services(self, deadline: float | None) -> None:
        services = [s for s in self._services if s._state != _STOPPED]
        for service in services:
            if service._state == _RUNNING:
                service._signal_stop()
        for service in services:
            service._join(deadline)
        killing: list[Greenlet[Any, Any]] = []
        for service in services:
            killing.extend(service._kill_leftovers())
        if killing:
            gevent.joinall(killing, timeout=self.kill_timeout)
        for service in services:
            try:
                service._finish_stop()
            except Exception:
                logger.exception("%s: error while stopping %r", self.name, service)

    def _run_shutdown_hooks(self, deadline: float | None) -> list[tuple[str, BaseException]]:
        due = [h for h in self._shutdown if h.component.shutdown_due]
        errors: list[tuple[str, BaseException]] = []
        fatal: BaseException | None = None
        for hook in sorted(due, key=lambda h: h.order):
            budget = _remaining(deadline)
            if budget is not None:
                budget = max(budget, self.min_hook_timeout)
            timer = gevent.Timeout(budget)
            timer.start()
            token = _current_lifecycle.set(self)
            try:
                logger.debug("%s: shutdown hook %s (priority %s)",
                             self.name, hook.name, hook.priority)
                self.in_context(hook.func)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                error = SbioTimeoutError(
                    f"shutdown hook {hook.name} did not return within {budget:.1f} s"
                )
                logger.error("%s: %s", self.name, error)
                errors.append((hook.name, error))
            except Exception as exc:
                logger.exception("%s: shutdown hook %s raised; running the others",
                                 self.name, hook.name)
                errors.append((hook.name, exc))
            except BaseException as exc:  # KeyboardInterrupt, SystemExit...: finish, then re-raise
                logger.error("%s: shutdown hook %s raised %s",
                             self.name, hook.name, type(exc).__name__)
                errors.append((hook.name, exc))
                fatal = fatal or exc
            finally:
                _current_lifecycle.reset(token)
                timer.close()
        if fatal is not None:
            raise fatal
        return errors

    # -- context manager and test support -----------------------------------

    def __enter__(self) -> Lifecycle:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.stop()
        return False

    @contextlib.contextmanager
    def isolated(self, timeout: float | None = 5) -> Iterator[Lifecycle]:
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
                (self._startup, self._shutdown, self._services, self._components,
                 self.waiter) = saved

    def __repr__(self) -> str:
        return (
            f"<Lifecycle {self.name!r} {self._state}: {len(self._startup)} startup, "
            f"{len(self._shutdown)} shutdown hook(s), {len(self._services)} task(s)/caller(s)>"
        )
