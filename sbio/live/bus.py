"""The live-data bus: the path from :func:`~sbio.live.notify` to every LiveData (:class:`Bus`,
:class:`LocalBus`; the Redis one is :class:`sbio.cluster.RedisBus`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable

import gevent
import gevent.event
import gevent.pool
from gevent.hub import Hub

from ..hub import HubHandoff
from ..hub import real_thread_ident as _real_get_ident

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

#: A bus subscriber: ``callback(channels, trigger)``.
Subscriber = Callable[[tuple[str, ...], str], object]

# -- the bus ----------------------------------------------------------------------------


def _mailbox(hub: Hub) -> HubHandoff:
    """Hands notifications from other OS threads to one hub's thread (in its loop callback:
    bus subscribers never block)."""
    return HubHandoff(hub, name="live-data bus")


class Bus:
    """The path from :func:`notify` to every :class:`LiveData` (in this process or all).

    Subscribers are callables ``callback(channels, trigger)`` (channels: a
    tuple of str). :meth:`deliver` calls each one in the OS thread of the
    gevent hub it subscribed from, whatever thread delivers, so callbacks
    need no locks; they must not block.

    Subclasses implement :meth:`publish`: :class:`LocalBus` delivers in
    this process; a cross-process bus (Redis) publishes to its backend and
    calls :meth:`deliver` for each message its listener receives.
    """

    def __init__(self) -> None:
        # ((callback, mailbox), ...): replaced, never mutated
        self._subscribers: tuple[tuple[Subscriber, HubHandoff], ...] = ()
        self._mailboxes: dict[int, HubHandoff] = {}  # hub thread ident -> HubHandoff

    def publish(self, channels: Iterable[str], trigger: str) -> None:
        """Send the notification; called from any greenlet or OS thread."""
        raise NotImplementedError

    def subscribe(self, callback: Subscriber) -> None:
        """Call *callback(channels, trigger)* for every notification (in this hub's thread)."""
        hub = gevent.get_hub()
        mailbox = self._mailboxes.get(hub.thread_ident)
        if mailbox is None:
            mailbox = self._mailboxes[hub.thread_ident] = _mailbox(hub)
        self._subscribers = (*self._subscribers, (callback, mailbox))

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling *callback*. Not an error if it was not subscribed."""
        self._subscribers = tuple(s for s in self._subscribers if s[0] != callback)

    @property
    def subscriber_count(self) -> int:
        """How many callbacks are subscribed."""
        return len(self._subscribers)

    @property
    def reach_key(self) -> Hashable:
        """Buses with equal keys deliver to each other's subscribers (one Redis
        channel): :func:`notify` publishes once per key. This bus itself by default."""
        return self

    def deliver(self, channels: tuple[str, ...], trigger: str) -> None:
        """Hand a notification to every subscriber; safe from any thread."""
        ident = _real_get_ident()
        for callback, mailbox in self._subscribers:
            if mailbox.thread_ident == ident:
                self._call(callback, channels, trigger)
            else:
                mailbox.post(self._call, callback, channels, trigger)

    @staticmethod
    def _call(callback: Subscriber, channels: tuple[str, ...], trigger: str) -> None:
        try:
            callback(channels, trigger)
        except Exception:
            log.exception("live-data bus subscriber %r failed on %s", callback, channels)

    def close(self) -> None:
        """Drop every subscriber and stop the thread hand-off watchers."""
        self._subscribers = ()
        mailboxes, self._mailboxes = self._mailboxes, {}
        for mailbox in mailboxes.values():
            try:
                mailbox.close()
            except Exception:  # the hub of that thread may be gone
                log.debug("closing a bus mailbox failed", exc_info=True)


class LocalBus(Bus):
    """The in-process bus (the default): every publish is delivered in this process."""

    def publish(self, channels: Iterable[str], trigger: str) -> None:
        self.deliver(tuple(channels), trigger)
