""":class:`_Service`: the common machinery of :class:`~sbio.tasks.DaemonTask` and the
callers -- greenlets owned by one :class:`gevent.pool.Group`, started and stopped together.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from gevent.greenlet import Greenlet
from gevent.pool import Group

from ._lifecycle import (
    _RUNNING,
    _STOPPED,
    _STOPPING,
    Lifecycle,
    LifecycleError,
    _remaining,
    _run_as,
)
from .hooks import _default_lifecycle

logger = logging.getLogger("sbio.tasks")  # one logger for the whole package, as documented


class _Service:
    """Greenlets owned by one :class:`gevent.pool.Group`, started and stopped together."""

    #: What log messages call this kind of service.
    kind = "service"
    #: Seconds ``stop()`` waits for killed greenlets to die before abandoning them.
    kill_timeout = 1.0

    def __init__(self, name: str, threads: int, lifecycle: Lifecycle | None) -> None:
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"{type(self).__name__} threads must be an int >= 1, got {threads!r}")
        self.name = name
        self.threads = threads
        self.lifecycle = _default_lifecycle() if lifecycle is None else lifecycle
        self._state = _STOPPED
        self._group: Group | None = None  # created by start(): a fresh Group per run
        self._stop_started: float | None = None
        self._killed = False
        # greenlets that survived a kill, still ours to report
        self._abandoned: list[Greenlet[Any, Any]] = []

    @property
    def running(self) -> bool:
        """``True`` between :meth:`start` and :meth:`stop`."""
        return self._state == _RUNNING

    def greenlets(self) -> list[Greenlet[Any, Any]]:
        """The live greenlets this service owns: empty once it stopped, unless
        some survived a kill (those were logged and stay listed here)."""
        self._abandoned = [g for g in self._abandoned if not g.dead]
        return self._live() + self._abandoned

    def _live(self) -> list[Greenlet[Any, Any]]:
        if self._group is None:
            return []
        return [g for g in list(self._group) if not g.dead]

    def start(self) -> None:
        """Spawn the greenlets. Does nothing if already running."""
        if self._state == _RUNNING:
            return
        if self._state == _STOPPING:
            raise LifecycleError(
                f"{self.kind} {self.name!r} is stopping; start it after stop() returns"
            )
        self._group = Group()  # made here, not in __init__: a Group needs the hub
        self._killed = False
        self._state = _RUNNING
        self._on_start()
        for i in range(self.threads):
            greenlet = self._group.spawn(_run_as, self.lifecycle, self._run_greenlet)
            greenlet.name = f"{self.name}[{i}]" if self.threads > 1 else self.name
        logger.debug("%s %r started with %d greenlet(s)", self.kind, self.name, self.threads)

    def stop(self, timeout: float | None = 5) -> bool:
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

    def _signal_stop(self) -> None:
        self._state = _STOPPING
        self._stop_started = time.monotonic()
        self._on_signal_stop()

    def _others(self) -> list[Greenlet[Any, Any]]:
        current = gevent.getcurrent()
        # A service's own greenlet may call stop() (e.g. a task that shuts the
        # server down): never join or kill the caller, it ends by itself.
        return [g for g in self._live() if g is not current]

    def _join(self, deadline: float | None) -> None:
        others = self._others()
        if others:
            gevent.joinall(others, timeout=_remaining(deadline))

    def _kill_leftovers(self) -> list[Greenlet[Any, Any]]:
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

    def _finish_stop(self) -> bool:
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
    def _on_start(self) -> None:
        pass

    def _on_signal_stop(self) -> None:
        pass

    def _on_stopped(self) -> None:
        pass

    def _run_greenlet(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state}>"
