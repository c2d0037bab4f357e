"""Handing work from any OS thread to one gevent hub's thread: :class:`HubHandoff`.

gevent's loop, its queues and python-socketio's state belong to the thread
of one hub. Code in another OS thread (a library callback, a thread pool, a
hardware reader) must not touch them: a packet it queues sits until that
hub wakes up for something else. A hand-off queues the work in a deque and
wakes the hub's loop with a libev/libuv async watcher, whose ``send()`` is
the one loop operation that is safe from any thread. The live-data bus
(:mod:`sbio.live.bus`) and each :class:`sbio.Server` (emits from threads)
use one each.
"""
import collections
import logging
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey

__all__ = ["HubHandoff", "real_thread_ident"]

log = logging.getLogger(__name__)

#: The real OS thread id, whether or not (or whenever) threading is monkey-patched.
real_thread_ident = monkey.get_original("_thread", "get_ident")

#: Items a drain greenlet runs before it lets other greenlets run.
_BATCH = 100


class HubHandoff:
    """Runs callables in the thread of one gevent hub, in the order they were posted.

    Make it in the hub's own thread; :meth:`post` is safe from any thread.

    :param hub: the hub (by default the current thread's).
    :param in_greenlet: False runs each callable in the loop's callback,
        which must then never block (the live-data bus); True runs them in a
        greenlet of the hand-off's own, started when work arrives and ended
        when the queue is empty, so they may block (an emit through Redis,
        an ``on_disconnect`` touching the database).
    :param name: for the log line of a callable that raised.
    """

    def __init__(self, hub: Any = None, *, in_greenlet: bool = False,
                 name: str = "hub hand-off") -> None:
        hub = gevent.get_hub() if hub is None else hub
        #: the OS thread id of the hub's thread (compare with :data:`real_thread_ident`)
        self.thread_ident = hub.thread_ident
        self.name = name
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = \
            collections.deque()  # append / popleft are thread-safe
        self._in_greenlet = in_greenlet
        self._drainer: gevent.Greenlet | None = None
        self._closed = False
        self._watcher = hub.loop.async_()
        self._watcher.start(self._wake)
        self._watcher.ref = False  # does not keep the loop alive by itself

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: :meth:`post` drops the work."""
        return self._closed

    def in_hub_thread(self) -> bool:
        """True when called from the hub's own thread."""
        return real_thread_ident() == self.thread_ident

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the hub's thread soon; safe from any thread.

        Returns False (and drops the work) once the hand-off is closed.
        """
        if self._closed:
            return False
        self._queue.append((fn, args))
        try:
            self._watcher.send()  # thread-safe: wakes the loop of the hub's thread
        except Exception:  # closed meanwhile, by the hub's thread
            return False
        return True

    def _wake(self) -> None:
        if not self._in_greenlet:
            self._run()
        elif self._drainer is None:
            # Spawning does not switch: allowed in a loop callback. The drainer
            # clears _drainer when the queue is empty, without switching in
            # between, so work posted after that wakes a new one.
            self._drainer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        try:
            while self._queue:
                self._run(_BATCH)
                if self._queue:
                    gevent.sleep(0)  # let the writers send what was just queued
        finally:
            self._drainer = None

    def _run(self, limit: int | None = None) -> None:
        queue = self._queue
        done = 0
        while queue and (limit is None or done < limit):
            fn, args = queue.popleft()
            done += 1
            try:
                fn(*args)
            except Exception:
                log.exception("%s: %r failed", self.name, fn)

    def close(self) -> None:
        """Stop the watcher, drop what is queued, kill the drainer (from the hub's thread)."""
        self._closed = True
        self._queue.clear()
        drainer, self._drainer = self._drainer, None
        if drainer is not None:
            drainer.kill(block=False)
        self._watcher.stop()
        self._watcher.close()
