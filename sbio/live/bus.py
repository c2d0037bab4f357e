"""The live-data bus: the path from :func:`~sbio.live.notify` to every LiveData (:class:`Bus`,
:class:`LocalBus`; the Redis one is :class:`sbio.cluster.RedisBus`).
"""
import collections
import logging

import gevent
import gevent.event
import gevent.pool
from gevent import monkey

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

# The real OS thread id, whether or not (or whenever) threading is monkey-patched.
_real_get_ident = monkey.get_original("_thread", "get_ident")

# -- the bus ----------------------------------------------------------------------------


class _Mailbox:
    """Hands notifications from other OS threads to one hub's thread."""

    def __init__(self, hub):
        self.thread_ident = hub.thread_ident
        self.queue = collections.deque()  # append / popleft are thread-safe
        self.watcher = hub.loop.async_()
        self.watcher.start(self._drain)
        self.watcher.ref = False  # does not keep the loop alive by itself

    def post(self, item):
        self.queue.append(item)
        self.watcher.send()  # thread-safe: wakes the loop of the hub's thread

    def _drain(self):
        queue = self.queue
        while queue:
            callback, channels, trigger = queue.popleft()
            Bus._call(callback, channels, trigger)

    def close(self):
        self.watcher.stop()
        self.watcher.close()


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

    def __init__(self):
        self._subscribers = ()  # ((callback, mailbox), ...): replaced, never mutated
        self._mailboxes = {}    # hub thread ident -> _Mailbox

    def publish(self, channels, trigger):
        """Send the notification; called from any greenlet or OS thread."""
        raise NotImplementedError

    def subscribe(self, callback):
        """Call *callback(channels, trigger)* for every notification (in this hub's thread)."""
        hub = gevent.get_hub()
        mailbox = self._mailboxes.get(hub.thread_ident)
        if mailbox is None:
            mailbox = self._mailboxes[hub.thread_ident] = _Mailbox(hub)
        self._subscribers = self._subscribers + ((callback, mailbox),)

    def unsubscribe(self, callback):
        """Stop calling *callback*. Not an error if it was not subscribed."""
        self._subscribers = tuple(s for s in self._subscribers if s[0] != callback)

    @property
    def subscriber_count(self):
        return len(self._subscribers)

    @property
    def reach_key(self):
        """Buses with equal keys deliver to each other's subscribers (one Redis
        channel): :func:`notify` publishes once per key. This bus itself by default."""
        return self

    def deliver(self, channels, trigger):
        """Hand a notification to every subscriber; safe from any thread."""
        ident = _real_get_ident()
        for callback, mailbox in self._subscribers:
            if mailbox.thread_ident == ident:
                self._call(callback, channels, trigger)
            else:
                mailbox.post((callback, channels, trigger))

    @staticmethod
    def _call(callback, channels, trigger):
        try:
            callback(channels, trigger)
        except Exception:
            log.exception("live-data bus subscriber %r failed on %s", callback, channels)

    def close(self):
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

    def publish(self, channels, trigger):
        self.deliver(tuple(channels), trigger)
