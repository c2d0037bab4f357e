"""pytest fixtures for background tasks; the sbio plugin re-exports ``__all__``.

``sbio_lifecycle``
    The process-wide :data:`sbio.tasks.lifecycle`, emptied for the test (no
    hooks, tasks or callers), not started. Register what the test needs, then
    ``sbio_lifecycle.start()`` / ``.stop()`` or ``with sbio_lifecycle:``.
    Afterwards it is stopped and the registrations made before the test are
    put back. Tasks created in the test body register with it automatically.
``sbio_clock``
    A :class:`FakeClock` installed as ``sbio_lifecycle``'s waiter: the tasks'
    intervals pass only when the test calls ``sbio_clock.advance(seconds)``.
``sbio_run_task_once``
    ``sbio_run_task_once(task)`` calls a :class:`~sbio.tasks.DaemonTask`'s function
    once in the test's greenlet, re-raising its exception
    (``raise_errors=False`` returns it instead, after logging it as the loop would).
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import gevent
import pytest
from gevent.event import Event

from sbio.errors import SbioTimeoutError
from sbio.tasks import lifecycle as _global_lifecycle

if TYPE_CHECKING:
    from greenlet import greenlet

    from sbio.tasks import DaemonTask, Lifecycle

__all__ = ["FakeClock", "sbio_lifecycle", "sbio_clock", "sbio_run_task_once"]


class _Sleeper:
    __slots__ = ("deadline", "alarm", "greenlet")

    def __init__(self, deadline: float | None, alarm: Event, greenlet: greenlet) -> None:
        self.deadline = deadline
        self.alarm = alarm
        self.greenlet = greenlet


class FakeClock:
    """A clock that moves only when told to, for counting interval runs without sleeping.

    Use :meth:`wait` as a waiter (``Lifecycle(waiter=clock.wait)``, or
    ``DaemonTask(..., waiter=clock.wait)``)::

        clock = FakeClock()
        task = DaemonTask(tick, interval=10, lifecycle=Lifecycle(waiter=clock.wait))
        task.start()
        clock.wait_for_sleepers(1)   # the first call ran, the task waits
        clock.advance(35)            # runs at t=10, 20, 30
        assert calls == 4

    :meth:`advance` wakes each sleeper whose deadline falls in the window, in
    time order, and lets the woken greenlets run until they wait again (or
    end) before moving on, so the count is exact. The stop event still ends a
    wait at once. Only the waits that go through :meth:`wait` are fake; other
    real-time waits (``gevent.sleep``) are not.

    :param start: the initial fake time (:meth:`time`).
    :param settle_timeout: real seconds a woken greenlet may take to wait
        again before :meth:`advance` raises :class:`~sbio.errors.SbioTimeoutError`.
    """

    __test__ = False

    def __init__(self, start: float = 0.0, settle_timeout: float = 5.0) -> None:
        self.now = float(start)
        self.settle_timeout = settle_timeout
        self._sleepers: list[_Sleeper] = []
        self._woken: set[greenlet] = set()
        self._linked: weakref.WeakSet[greenlet] = weakref.WeakSet()
        self._changed = Event()

    def time(self) -> float:
        """The fake time in seconds."""
        return self.now

    @property
    def sleepers(self) -> int:
        """How many greenlets wait on this clock now."""
        return len(self._sleepers)

    def wait(self, event: Event, timeout: float | None) -> bool:
        """The waiter: block until *event* is set or the fake time reaches now + *timeout*."""
        current = gevent.getcurrent()
        self._woken.discard(current)
        if event.is_set():
            self._changed.set()
            return True
        if timeout is not None and timeout <= 0:
            self._changed.set()
            gevent.sleep(0)
            return event.is_set()
        alarm = Event()
        deadline = None if timeout is None else self.now + timeout
        sleeper = _Sleeper(deadline, alarm, current)
        self._sleepers.append(sleeper)
        self._changed.set()
        try:
            gevent.wait([event, alarm], count=1)
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move the fake time forward by *seconds*, waking the due sleepers in order."""
        if seconds < 0:
            raise ValueError("a FakeClock does not go backwards")
        target = self.now + seconds
        gevent.sleep(0)  # let greenlets spawned just before reach their first wait
        while True:
            due = [(s.deadline, s) for s in self._sleepers
                   if s.deadline is not None and s.deadline <= target]
            if not due:
                break
            self.now = max(self.now, min(deadline for deadline, _ in due))
            for sleeper in [s for deadline, s in due if deadline <= self.now]:
                self._sleepers.remove(sleeper)
                self._woken.add(sleeper.greenlet)
                rawlink = getattr(sleeper.greenlet, "rawlink", None)
                if rawlink is not None and sleeper.greenlet not in self._linked:
                    rawlink(self._on_death)  # a gevent Greenlet: hear about its death
                    self._linked.add(sleeper.greenlet)
                sleeper.alarm.set()
            self._settle()
        self.now = target

    def _on_death(self, _greenlet: object) -> None:
        self._changed.set()

    def wait_for_sleepers(self, count: int, timeout: float = 5.0) -> None:
        """Block (real time, up to *timeout* s) until *count* greenlets wait on the clock."""
        deadline = time.monotonic() + timeout
        while len(self._sleepers) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SbioTimeoutError(
                    f"{len(self._sleepers)} greenlet(s) wait on the FakeClock after {timeout} s, "
                    f"expected {count}"
                )
            self._changed.clear()
            self._changed.wait(remaining)

    def _settle(self) -> None:
        deadline = time.monotonic() + self.settle_timeout
        while True:
            self._woken = {g for g in self._woken if not g.dead}
            if not self._woken:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SbioTimeoutError(
                    f"woken greenlet(s) {sorted(map(repr, self._woken))} did not wait on the "
                    f"FakeClock again within {self.settle_timeout} s"
                )
            self._changed.clear()
            linked = all(hasattr(g, "rawlink") for g in self._woken)
            # gevent Greenlets report their death through rawlink; plain
            # greenlets are checked again every 50 ms.
            self._changed.wait(remaining if linked else min(remaining, 0.05))

    def __repr__(self) -> str:
        return f"<FakeClock t={self.now} sleepers={len(self._sleepers)}>"


@pytest.fixture
def sbio_lifecycle() -> Iterator[Lifecycle]:
    """The global lifecycle, emptied for this test and restored (and stopped) afterwards."""
    with _global_lifecycle.isolated(timeout=5) as lifecycle:
        yield lifecycle


@pytest.fixture
def sbio_clock(sbio_lifecycle: Lifecycle) -> FakeClock:
    """A :class:`FakeClock` that drives the intervals of ``sbio_lifecycle``'s tasks."""
    clock = FakeClock()
    sbio_lifecycle.waiter = clock.wait
    return clock


@pytest.fixture
def sbio_run_task_once() -> Callable[..., BaseException | None]:
    """``sbio_run_task_once(task, raise_errors=True)``: call a DaemonTask's function once, here."""

    def run(task: DaemonTask, raise_errors: bool = True) -> BaseException | None:
        if task.running:
            raise RuntimeError(
                f"{task!r} is running; stop it before sbio_run_task_once (its loop would "
                "run concurrently)"
            )
        error = task.run_once()
        if error is not None and raise_errors:
            raise error
        return error

    return run
