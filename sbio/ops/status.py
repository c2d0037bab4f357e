"""The live status page, ``/sbio/status``: sbio showing itself with its own live data.

A :class:`StatusSampler` greenlet, owned by the server, samples the
server's counters every ``metrics.status_interval`` seconds (connections per
namespace, events and errors per second, broadcaster queue, re-runs and
pushes per second) and keeps ``metrics.status_window`` seconds of them.
After each sample it notifies :data:`STATUS_CHANNEL` on this server's
status broadcaster only (never the bus: the status of one process is not
another's). The page (``status.html``, sbio.js) subscribes to
:meth:`StatusNamespace.on_status` on the internal namespace
``/sbio/status`` and redraws its charts on every push; the subscription is
``shared``: computed once per sample for every viewer.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any

import gevent
import gevent.event

from ..errors import ConnectionRefused
from ..live import subscribes
from ..namespace import Namespace

__all__ = ["STATUS_NAMESPACE", "STATUS_CHANNEL", "StatusNamespace", "StatusSampler", "page"]

log = logging.getLogger("sbio.ops")

#: The socket.io namespace of the status page (and its URL).
STATUS_NAMESPACE = "/sbio/status"
#: The channel each sample notifies.
STATUS_CHANNEL = "sbio:status"
#: Trigger of the pushes after a sample.
SAMPLE_TRIGGER = "sample"

_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "status.html")


def page() -> bytes:
    """The HTML of the status page."""
    with open(_PAGE, "rb") as f:
        return f.read()


class StatusNamespace(Namespace):
    """sbio's status page: connections, events, broadcaster activity (internal namespace)."""

    name = STATUS_NAMESPACE

    def on_connect(self, auth: Any) -> None:
        ops = self.server.ops
        if ops.access is None or not ops.access.allows_connection(self.environ, auth):
            raise ConnectionRefused("the status page is not readable from here "
                                    "(metrics.access)")

    @subscribes(STATUS_CHANNEL, shared=True)
    def on_status(self) -> dict[str, Any]:
        """The samples of the last ``metrics.status_window`` seconds."""
        sampler = self.server.ops.sampler
        if sampler is None:
            return {"interval": 0, "window": 0, "namespaces": [], "samples": []}
        return sampler.snapshot()


class StatusSampler:
    """Samples one server's counters every *interval* seconds, keeps *window* seconds of them.

    Its greenlet runs between :meth:`start` and :meth:`stop` (the server's).
    """

    def __init__(self, server: Any, interval: float = 2.0, window: float = 600.0) -> None:
        self.server = server
        self.interval = float(interval)
        self.window = float(window)
        #: the samples, oldest first (bounded: window / interval)
        self.samples: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=max(2, int(self.window / self.interval) + 1))
        self._previous: tuple[float, dict[str, float]] | None = None
        self._stop = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None
        self._failing = False

    def start(self) -> None:
        if self._greenlet is not None:
            return
        self._stop.clear()
        self._greenlet = gevent.spawn(self._loop)
        self._greenlet.name = "sbio status sampler"

    def stop(self, timeout: float = 1.0) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is None:
            return
        self._stop.set()
        greenlet.join(timeout)
        if not greenlet.dead:
            log.warning("the status sampler did not stop within %ss: killed", timeout)
            greenlet.kill(block=True, timeout=1)

    def _loop(self) -> None:
        while True:
            try:
                self.sample()
                self._failing = False
            except Exception:
                if not self._failing:  # once per spell of failures
                    log.exception("sampling the status page's data failed")
                self._failing = True
            if self._stop.wait(self.interval):
                return

    def _broadcasters(self) -> list[Any]:
        """The broadcasters of the application's namespaces (not the status page's own)."""
        return [broadcaster for name, broadcaster in list(self.server.live.broadcasters.items())
                if name != STATUS_NAMESPACE]

    def counters(self) -> dict[str, float]:
        """The server's cumulative counters now (the rates are their differences).

        The status page's own namespace is left out: its viewers would count
        their own subscription's pushes.
        """
        events = errors = 0
        metrics = self.server.ops.metrics
        stats_by_namespace = dict(metrics.stats) if metrics is not None else {}
        stats_by_namespace.pop(STATUS_NAMESPACE, None)
        for stats in stats_by_namespace.values():
            n, bad = stats.totals()
            events += n
            errors += bad
        reruns = pushes = 0
        for broadcaster in self._broadcasters():
            reruns += broadcaster.metrics.get("reruns", 0)
            pushes += broadcaster.metrics.get("pushes", 0)
        return {"events": events, "errors": errors, "reruns": reruns, "pushes": pushes}

    def sample(self) -> dict[str, Any]:
        """Take one sample, keep it, and push it to the status page's subscribers."""
        now = time.monotonic()
        counters = self.counters()
        rates = dict.fromkeys(counters, 0.0)
        if self._previous is not None:
            then, before = self._previous
            elapsed = max(now - then, 1e-6)
            rates = {key: max(0.0, (value - before[key]) / elapsed)
                     for key, value in counters.items()}
        self._previous = (now, counters)
        connections = {}
        for name, dispatcher in list(self.server.sio.dispatchers.items()):
            connections[name] = sum(1 for instance in list(dispatcher.instances.values())
                                    if instance.connected)
        queue = subscriptions = 0
        for broadcaster in self._broadcasters():
            queue += broadcaster.metrics.get("queue_depth", 0)
            subscriptions += broadcaster.subscription_count()
        sample = {"t": round(time.time(), 3), "connections": connections,
                  "events": round(rates["events"], 3), "errors": round(rates["errors"], 3),
                  "reruns": round(rates["reruns"], 3), "pushes": round(rates["pushes"], 3),
                  "queue": queue, "subscriptions": subscriptions,
                  "totals": {"events": counters["events"], "errors": counters["errors"]}}
        self.samples.append(sample)
        broadcaster = self.server.live.broadcasters.get(STATUS_NAMESPACE)
        if broadcaster is not None:
            broadcaster.notify((STATUS_CHANNEL,), SAMPLE_TRIGGER)
        return sample

    def snapshot(self) -> dict[str, Any]:
        """What the page draws: the settings, the namespaces and every sample kept."""
        samples = list(self.samples)
        namespaces = sorted({name for sample in samples for name in sample["connections"]})
        return {"interval": self.interval, "window": self.window, "namespaces": namespaces,
                "samples": samples}
