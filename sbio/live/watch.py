"""Server-side watches: a subscription of server code (a task, another namespace, a view).

:meth:`sbio.live.LiveData.watch` subscribes to a ``@subscribes`` handler
without a socket. The handler runs as a namespace instance of the watch's own
(its ``session`` is *as_session*, its ACL the class's initial one or the one
asked for), through the same dispatch, ACL checks and change detection as a
connection's subscription; changed results reach a callback, in a greenlet
the watch owns, in order. The watch ends with :meth:`Watch.stop`, a
``forbidden`` result, or the server's ``stop()``.
"""
import collections
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import gevent.event

from ..errors import RpcError

log = logging.getLogger("sbio.live")

__all__ = ["Watch"]

#: The trigger the callback gets with a watch's first result.
FIRST_TRIGGER = "subscribe"

class Watch:
    """A running server-side watch (returned by :meth:`sbio.live.LiveData.watch`).

    ``value`` is the latest result (the first one as soon as ``watch()``
    returns); ``namespace``, ``event``, ``args`` and ``instance`` (the
    namespace instance the handler runs as) describe it; ``dropped`` counts
    updates that were replaced by newer ones because the callback fell
    behind by more than ``broadcaster.watch_queue``.
    """

    def __init__(self, live: Any, namespace: str, event: str, args: list[Any],
                 callback: Callable[[Any, str], Any] | None,
                 on_error: Callable[[dict[str, Any]], Any] | None) -> None:
        self.live = live
        self.namespace = namespace
        self.event = event
        self.args = args
        self.callback = callback
        self.on_error = on_error
        self.id = f"watch-{next(live._watch_ids)}"
        self.value: Any = None
        self.dropped = 0
        self.instance: Any = None
        self._sub: Any = None
        self._queue: collections.deque[tuple[str, Any, Any]] = collections.deque()
        self._wake = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if not self.alive else "running"
        return f"<Watch {self.id} {self.namespace} {self.event}{tuple(self.args)!r} {state}>"

    @property
    def alive(self) -> bool:
        """True until :meth:`stop`, a ``forbidden`` result or the server's stop."""
        return not self._stopped and self._sub is not None and self._sub.alive

    # -- fed by the broadcaster (hub thread) ------------------------------------------------

    def put_data(self, text: str, trigger: Any) -> None:
        self._put(("data", text, trigger))

    def put_error(self, error: dict[str, Any]) -> None:
        self._put(("error", error, None))

    def _put(self, item: tuple[str, Any, Any]) -> None:
        if self._stopped:
            return
        queue = self._queue
        queue.append(item)
        if len(queue) > self.live.watch_queue:
            queue.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%r: its callback fell behind by more than %d updates "
                            "(broadcaster.watch_queue); the oldest are dropped", self,
                            self.live.watch_queue)
        self._wake.set()

    # -- the watch's greenlet -----------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        while True:
            while queue:
                kind, payload, trigger = queue.popleft()
                if kind == "data":
                    self.value = json.loads(payload)  # what a socket subscriber decodes
                    if self.callback is not None:
                        self._call(self.callback, self.value, trigger)
                elif self.on_error is not None:
                    self._call(self.on_error, payload)
                else:
                    log.warning("%r: the handler failed: %s (no on_error callback)", self,
                                payload)
            if self._stopped:
                return
            if not (self._sub is not None and self._sub.alive):  # dropped: forbidden
                self.stop()
                return
            self._wake.clear()
            self._wake.wait()

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%r: callback %r failed", self, fn)

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the watch: no more callbacks (one running now finishes). Idempotent.

        Its greenlet ends by itself once a running callback returns; the
        server's ``stop()`` joins it, then kills it after the stop timeout.
        """
        if self._stopped:
            return
        self._stopped = True
        self._queue.clear()
        sub, self._sub = self._sub, None
        if sub is not None:
            self.live.broadcaster(self.namespace)._remove(sub)
        self.live._watches.pop(self.id, None)
        if self.instance is not None:
            self.instance.jobs.kill(block=False)
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the greenlet has ended (after :meth:`stop`); kill it if it has not
        within *timeout*. True if it ended by itself."""
        greenlet = self._greenlet
        if greenlet is None or greenlet is gevent.getcurrent():
            return True
        greenlet.join(timeout)
        if greenlet.dead:
            return True
        log.warning("%r: its callback did not return within %ss of the stop: killed", self,
                    timeout)
        greenlet.kill(block=True, timeout=1)
        return False


def start_watch(live: Any, namespace: str, event: str, args: Sequence[Any],
                callback: Callable[[Any, str], Any] | None, *,
                as_session: dict[str, Any] | None, acl: Iterable[str] | str,
                on_error: Callable[[dict[str, Any]], Any] | None) -> Watch:
    """:meth:`sbio.live.LiveData.watch` (see there)."""
    broadcaster = live.broadcasters.get(namespace)
    if broadcaster is None:
        raise KeyError(f"no namespace {namespace!r} on this server")
    if sum(1 for w in live._watches.values() if w.namespace == namespace) >= live.max_watches:
        raise RuntimeError(f"too many watches on {namespace} (limit {live.max_watches}, "
                           "broadcaster.max_watches): stop some first")
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"watch(): args must be a list or tuple, got {type(args).__name__}")
    watch = Watch(live, namespace, event, list(args), callback, on_error)
    dispatcher = broadcaster.dispatcher
    instance = dispatcher.cls(live.server, watch.id, {"sbio.watch": watch.id},
                              session=as_session)
    if acl == "all":
        instance.lift_acl_restrictions()
    elif acl != "initial":
        if isinstance(acl, str):
            raise ValueError('watch(): acl is "initial", "all" or handler names, '
                             f"got {acl!r}")
        instance.allowed_methods = set(acl)
    watch.instance = instance
    live._watches[watch.id] = watch
    try:
        envelope, text, sub = broadcaster.start_watch(instance, event, watch.args, watch)
    except BaseException:
        live._watches.pop(watch.id, None)
        raise
    if not envelope["ok"]:
        live._watches.pop(watch.id, None)
        error = envelope["error"]
        raise RpcError(error.get("code", "internal"), error.get("message", ""))
    watch._sub = sub
    watch.value = json.loads(text)
    watch._queue.appendleft(("data", text, FIRST_TRIGGER))  # before any update already queued
    watch._greenlet = gevent.spawn(watch._run)
    watch._greenlet.name = f"sbio-watch {watch.id} {namespace} {event}"
    return watch
