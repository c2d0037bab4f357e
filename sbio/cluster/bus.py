"""The live-data bus across processes (channel ``<prefix>:live``) and its message codec."""
from __future__ import annotations

import collections
import json
import logging
import threading
import uuid
from collections.abc import Hashable, Iterable
from typing import Any

import gevent
import gevent.event
from gevent.greenlet import Greenlet

from ..live import MANUAL_TRIGGER, Bus, live_data_on
from .connection import (
    Client,
    _Health,
    _require_monkey_patching,
    _Subscriber,
    check_url,
    make_client,
    redact,
    setting,
)

log = logging.getLogger("sbio.cluster")  # one logger for the package, as before the split

#: Trigger of the pushes caused by the re-run after a reconnection.
RESYNC_TRIGGER = "resync"

_WIRE_VERSION = 1


def encode_bus_message(origin: str, channels: Iterable[str], trigger: str,
                       resync: bool = False) -> str:
    """The text of one live-data bus message (``<prefix>:live``).

    ``{"v": 1, "o": origin, "c": [channel, ...], "t": trigger}``, plus
    ``"resync": true`` for a request to re-run everything. Every publisher
    (:class:`RedisBus`, :func:`notify_remote`) encodes with this.
    """
    message: dict[str, Any] = {"v": _WIRE_VERSION, "o": origin, "c": list(channels),
                               "t": trigger}
    if resync:
        message["resync"] = True
    return json.dumps(message, separators=(",", ":"))


def decode_bus_message(data: str | bytes) -> tuple[Any, list[str], Any, bool]:
    """``(origin, channels, trigger, resync)`` of a bus message (see :func:`encode_bus_message`).

    *origin* and *trigger* are as sent (*trigger* is None when the message has none).

    :raises ValueError: *data* is not such a message.
    """
    try:
        message = json.loads(data)
        origin = message["o"]
        names = message["c"]
        trigger = message.get("t")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a bus message: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("channels must be a list of strings")
    return origin, names, trigger, bool(message.get("resync"))



# -- live data: the bus ----------------------------------------------------------------------


class RedisBus(Bus):
    """The live-data bus across processes: :func:`sbio.live.notify` on any process
    re-runs the matching subscriptions of every process, once.

    :meth:`publish` delivers to this process's subscribers at once and queues
    the notification for a publisher greenlet, which sends queued
    notifications to Redis in pipelined batches, tagged with this bus's
    :attr:`origin`. The subscriber greenlet delivers what other processes
    publish and skips this bus's own messages, so each process runs each
    notification exactly once whatever Redis does.

    :param url: the Redis URL.
    :param channel: the pub/sub channel (``<prefix>:live``).
    :param max_pending: channels remembered while Redis is unreachable, to be
        published once it is back; beyond that the bus remembers to ask every
        process to re-run all its subscriptions instead.
    :param resync_on_reconnect: re-run every local subscription after a
        reconnection (updates published meanwhile by other processes were
        missed).

    Each server with ``server.message_queue`` has its own RedisBus (made by
    its :class:`Cluster`); two servers of one process on the same URL and
    prefix reach each other through Redis, as two processes would.
    """

    #: notifications sent per Redis round trip
    batch_size = 500

    def __init__(self, url: str, channel: str | None = None, *, max_pending: int | None = None,
                 reconnect_max_delay: float | None = None, socket_timeout: float | None = None,
                 resync_on_reconnect: bool = True, health: _Health | None = None) -> None:
        # None: the [cluster] defaults (channel <prefix>:live)
        super().__init__()
        check_url(url)
        self.url = url
        self.channel = f"{setting(None, 'prefix')}:live" if channel is None else channel
        self.max_pending = int(setting(max_pending, "max_pending"))
        self.socket_timeout = socket_timeout = setting(socket_timeout, "socket_timeout")
        self.resync_on_reconnect = resync_on_reconnect
        #: tags this bus's messages, so its own subscriber skips them
        self.origin = uuid.uuid4().hex
        self.part = f"live-data bus {self.origin[:8]}"  # for the outage bookkeeping
        self.health = _Health(url) if health is None else health
        #: counters: ``published`` (notifications sent to Redis), ``received``
        #: (delivered from other processes), ``held`` (kept during an outage),
        #: ``republished``, ``resyncs``, ``malformed``
        self.metrics = dict.fromkeys(("published", "received", "held", "republished",
                                      "resyncs", "malformed"), 0)
        # (channels, trigger); append/popleft thread-safe
        self._out: collections.deque[tuple[tuple[str, ...], str]] = collections.deque()
        self._held: dict[str, str] = {}  # channel -> trigger, while Redis is unreachable
        self._held_overflow = False
        self._client: Client | None = None
        # made by start(), in the hub that runs the publisher:
        self._wake: gevent.event.Event | None = None
        self._async: Any = None  # the loop's async watcher: wakes the publisher from a thread
        self._hub_thread: int | None = None
        self._publisher: Greenlet[[gevent.event.Event], None] | None = None
        self._subscriber = _Subscriber(url, [self.channel], self.part, self._on_message,
                                       self._on_connect,
                                       reconnect_max_delay=reconnect_max_delay,
                                       socket_timeout=socket_timeout, health=self.health)

    def __repr__(self) -> str:
        return f"<RedisBus {redact(self.url)} {self.channel}>"

    @property
    def reach_key(self) -> Hashable:
        """Buses on one URL and channel reach each other's subscribers (through Redis)."""
        return ("redis", self.url, self.channel)

    @property
    def running(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._publisher is not None

    @property
    def connected_event(self) -> gevent.event.Event:
        """Set while the bus is subscribed (notifications from other processes arrive)."""
        return self._subscriber.connected

    # -- Bus interface ------------------------------------------------------------------

    def publish(self, channels: Iterable[str], trigger: str) -> None:
        """Deliver here now; send to the other processes from the publisher greenlet."""
        names = tuple(channels)
        self.deliver(names, trigger)
        wake, watcher = self._wake, self._async
        if self._publisher is None or wake is None or watcher is None:
            log.warning("RedisBus %s is not running: notification of %s not sent to the other "
                        "processes", self.channel, list(names))
            return
        self._out.append((names, trigger))
        if threading.get_ident() == self._hub_thread:
            wake.set()
        else:
            watcher.send()  # thread-safe; wakes the publisher in the hub's thread

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> RedisBus:
        """Start the publisher and subscriber greenlets (in the calling thread's hub)."""
        if self._publisher is not None:
            return self
        _require_monkey_patching()
        hub = gevent.get_hub()
        self._hub_thread = threading.get_ident()
        self._wake = wake = gevent.event.Event()
        self._async = hub.loop.async_(ref=False)  # does not keep the loop alive by itself
        self._async.start(wake.set)
        self._publisher = gevent.spawn(self._publish_loop, wake)
        self._publisher.name = "sbio.cluster live publisher"
        self._subscriber.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (within *timeout*), then stop both greenlets."""
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        self._subscriber.stop()
        if self._out and not self.health.is_down(self.part):
            # False: the timeout ends the block silently (documented by gevent;
            # types-gevent's stub of Timeout.__init__ leaves it out)
            with gevent.Timeout(timeout, False):  # type: ignore[arg-type]
                self._send_queued()
        publisher.kill(block=True, timeout=timeout)
        if self._out or self._held:
            log.warning("RedisBus %s stopped with %d notification(s) not sent to the other "
                        "processes", self.channel, len(self._out) + len(self._held))
        self._out.clear()
        self._held.clear()
        watcher, self._async = self._async, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        """Stop, then drop every subscriber (see :meth:`Bus.close`)."""
        self.stop()
        super().close()

    # -- sending ----------------------------------------------------------------------------

    def _publish_loop(self, wake: gevent.event.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            self._send_queued()

    def _send_queued(self) -> None:
        out = self._out
        while out:
            batch: list[tuple[tuple[str, ...], str]] = []
            while out and len(batch) < self.batch_size:
                batch.append(out.popleft())
            if self.health.is_down(self.part):
                self._hold(batch)
                continue
            try:
                if self._client is None:
                    self._client = make_client(self.url, self.socket_timeout)
                pipe = self._client.pipeline(transaction=False)
                for channels, trigger in batch:
                    pipe.publish(self.channel, encode_bus_message(self.origin, channels, trigger))
                pipe.execute()
                self.metrics["published"] += len(batch)
            except Exception as exc:
                self.health.failed(self.part, exc)
                self._hold(batch)

    def _hold(self, batch: list[tuple[tuple[str, ...], str]]) -> None:
        """Remember notifications that could not be sent, coalesced by channel."""
        self.metrics["held"] += len(batch)
        self.health.count("notifications held for other processes", len(batch))
        if self._held_overflow:
            return
        for channels, trigger in batch:
            for name in channels:
                self._held[name] = trigger
        if len(self._held) > self.max_pending:
            log.warning("RedisBus %s: more than %d channels notified while Redis is "
                        "unreachable; every process will re-run all its subscriptions "
                        "once it is back", self.channel, self.max_pending)
            self._held.clear()
            self._held_overflow = True

    def _on_connect(self, first: bool) -> None:
        # Also on the first connection: a process that started while Redis
        # was down may hold notifications and serve subscriptions already.
        # Notifications held during the outage go out first, then this process
        # catches up with what it missed.
        held, self._held = self._held, {}
        overflow, self._held_overflow = self._held_overflow, False
        if overflow:
            self._send_resync_request()
        elif held:
            by_trigger: collections.defaultdict[str, list[str]] = collections.defaultdict(list)
            for name, trigger in held.items():
                by_trigger[trigger].append(name)
            for trigger, names in by_trigger.items():
                self._out.append((tuple(names), trigger))
            self.metrics["republished"] += len(held)
            log.info("RedisBus %s: publishing %d channel(s) notified during the outage",
                     self.channel, len(held))
            if self._wake is not None:  # else: sent once started
                self._wake.set()
        if self.resync_on_reconnect:
            self.resync_local()

    def _send_resync_request(self) -> None:
        try:
            if self._client is None:
                self._client = make_client(self.url, self.socket_timeout)
            self._client.publish(self.channel, encode_bus_message(self.origin, [], RESYNC_TRIGGER,
                                                                  resync=True))
        except Exception as exc:
            self.health.failed(self.part, exc)
            self._held_overflow = True

    # -- receiving --------------------------------------------------------------------------

    def _on_message(self, channel: object, data: str | bytes) -> None:
        try:
            origin, names, trigger, resync = decode_bus_message(data)
        except ValueError as exc:
            self.metrics["malformed"] += 1
            log.warning("RedisBus %s: ignoring a malformed message (%s): %.200r", self.channel,
                        exc, data)
            return
        if origin == self.origin:
            return  # delivered here when it was published
        if resync:
            self.resync_local()
            return
        if names:
            self.metrics["received"] += 1
            self.deliver(tuple(names), MANUAL_TRIGGER if trigger is None else str(trigger))

    def resync_local(self, trigger: str = RESYNC_TRIGGER) -> None:
        """Re-run every subscription of this process once (pushes only what changed)."""
        self.metrics["resyncs"] += 1
        for data in live_data_on(self):
            data.resync(trigger)
