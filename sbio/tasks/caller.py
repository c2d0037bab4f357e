""":class:`Caller` and :class:`GenericCaller`: greenlet workers consuming a bounded
queue of deferred calls.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, cast

from gevent.event import Event
from gevent.queue import Queue

from sbio.errors import QueueFull

from ._lifecycle import Lifecycle, _qualname
from .service import _Service

logger = logging.getLogger("sbio.tasks")  # one logger for the whole package, as documented


_STOP = object()  # queue sentinel: one per worker, put by stop()
_P = ParamSpec("_P")
#: a deferred call: (function, positional arguments, keyword arguments)
_Call = tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]


class _CallerBase(_Service):
    kind = "Caller"

    def __init__(self, name: str, threads: int, max_queue: int | None,
                 lifecycle: Lifecycle | None) -> None:
        if max_queue is not None and (
            isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1
        ):
            raise ValueError(
                f"{type(self).__name__} max_queue must be None or an int >= 1, got {max_queue!r}"
            )
        super().__init__(name, threads, lifecycle)
        self.max_queue = max_queue
        # made on first use (a Queue needs the hub); _STOP or a _Call
        self._queue: Queue[object] | None = None
        self._queued = 0  # calls waiting in the queue (sentinels excluded)
        self._pending = 0  # queued + running
        self._idle = Event()
        self._idle.set()
        self.lifecycle._register(self)

    def qsize(self) -> int:
        """How many deferred calls wait in the queue (not counting running ones)."""
        return self._queued

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every deferred call has finished; ``True`` if they did in time."""
        return bool(self._idle.wait(timeout))

    def _get_queue(self) -> Queue[object]:
        if self._queue is None:
            # Made on first use, not in __init__ (a Queue needs the hub).
            # Unbounded underneath: _put enforces max_queue, so stop() can
            # always add its sentinels.
            self._queue = Queue()
        return self._queue

    def _put(self, func: Callable[..., object], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> None:
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

    def _run_greenlet(self) -> None:
        q = self._get_queue()
        while True:
            item = q.get()  # blocks without polling; stop() wakes us with _STOP
            if item is _STOP:
                return
            self._queued -= 1
            func, args, kwargs = cast(_Call, item)
            try:
                self.lifecycle.in_context(func, *args, **kwargs)
            except Exception:
                logger.exception(
                    "%s %r: deferred call %s raised", self.kind, self.name, _qualname(func)
                )
            finally:
                self._pending = max(0, self._pending - 1)
                if self._pending == 0:
                    self._idle.set()

    def _on_signal_stop(self) -> None:
        # Workers finish what was deferred before stop() and then exit; calls
        # deferred while stopping stay queued for the next start.
        q = self._get_queue()
        for _ in range(len(self._live())):
            q.put(_STOP)

    def _on_stopped(self) -> None:
        q = self._get_queue()
        kept: list[object] = []
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
                "%s %r stopped with %d deferred call(s) still queued; "
                "they run when it starts again",
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

    def __init__(self, threads: int = 1, max_queue: int | None = 1000, name: str | None = None,
                 *, lifecycle: Lifecycle | None = None) -> None:
        super().__init__(name or "GenericCaller", threads, max_queue, lifecycle)

    def defer(self, func: Callable[_P, object], /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Queue ``func(*args, **kwargs)`` and return at once (raises :class:`QueueFull`)."""
        if not callable(func):
            raise TypeError(f"GenericCaller.defer needs a callable, got {func!r}")
        self._put(func, args, kwargs)


class Caller(_CallerBase, Generic[_P]):
    """Greenlet workers calling one function: ``caller.defer(*args, **kw)``.

    ::

        mailer = Caller(send_mail, threads=4)
        mailer.defer(to, body)          # returns at once

    Same parameters and behaviour as :class:`GenericCaller`, with *func* fixed;
    *name* defaults to the function's qualified name.
    """

    kind = "Caller"

    def __init__(self, func: Callable[_P, object], threads: int = 1,
                 max_queue: int | None = 1000, name: str | None = None, *,
                 lifecycle: Lifecycle | None = None) -> None:
        if not callable(func):
            raise TypeError(f"Caller needs a callable, got {func!r}")
        self.func = func
        super().__init__(name or _qualname(func), threads, max_queue, lifecycle)

    def defer(self, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Queue ``func(*args, **kwargs)`` and return at once (raises :class:`QueueFull`)."""
        self._put(self.func, args, kwargs)
