"""Scale-out on Redis: several sbio processes acting as one server.

Setting ``server.message_queue`` (``sbio run --message-queue redis://host:port/db``)
makes the :class:`~sbio.Server` build a :class:`Cluster`, which brings three
pieces, all keyed by the ``[cluster] prefix`` (processes sharing a Redis and a
prefix form one cluster):

* :class:`RedisManager` -- python-socketio's Redis client manager (channel
  ``<prefix>:socketio``): emits, room broadcasts and disconnects reach the
  clients of every process;
* :class:`RedisBus` -- the live-data bus (channel ``<prefix>:live``): every
  :func:`sbio.live.notify` re-runs the subscriptions of every process, once;
* :class:`RedisLocks` -- the lock behind ``DaemonTask(..., singleton=True)``
  (keys ``<prefix>:lock:<task name>``).

:func:`notify_remote` lets a program that is not a server (a cron job, a
worker) notify the subscribers of a cluster.

Redis outages. A process that loses Redis keeps serving its own clients:
emits, broadcasts and notifications reach its local clients as before. The
outage is logged once (a warning when it starts, an info line with what was
lost when it ends); every piece reconnects with capped exponential backoff and
jitter. Meanwhile:

* socket.io emits and broadcasts for other processes are dropped (counted in
  the recovery log line); python-socketio has no replay;
* notifications for other processes are remembered, coalesced by channel (at
  most ``[cluster] max_pending`` channels; beyond that a "resync everything"
  request is remembered instead), and published once Redis is back;
* once reconnected (channels resubscribed), the process re-runs every local
  subscription once, so updates published by other processes while it was
  cut off are not missed; clients get a push only where the result changed;
* singleton tasks: the holder stops its loop when it cannot renew the lock
  before it expires; whoever gets the lock after the outage runs it.

Monkey-patching. redis-py blocks in the socket module: the process must call
``gevent.monkey.patch_all()`` before importing anything else (``sbio run``
and the sbio pytest plugin do). :class:`Cluster` refuses to start otherwise.
:func:`notify_remote` needs no gevent at all.
"""
import collections
import json
import logging
import random
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import gevent
import gevent.event
import gevent.queue

from ..adapter import RedisManagerBase
from ..channels import channel_names
from ..errors import SbioError, SbioTimeoutError
from ..live import MANUAL_TRIGGER, Bus, live_data_on

__all__ = ["Cluster", "RedisBus", "RedisLocks", "RedisManager", "configure", "notify_remote",
           "DEFAULT_PREFIX", "RESYNC_TRIGGER"]

log = logging.getLogger(__name__)

#: Prefix of every Redis channel and key sbio uses, unless configured.
DEFAULT_PREFIX = "sbio"
#: Trigger of the pushes caused by the re-run after a reconnection.
RESYNC_TRIGGER = "resync"

_SCHEMES = {"redis": "redis", "rediss": "redis", "unix": "redis",
            "valkey": "valkey", "valkeys": "valkey",
            "redis+sentinel": "redis", "valkey+sentinel": "valkey"}

#: Defaults of the ``[cluster]`` configuration section.
DEFAULTS = {
    "prefix": DEFAULT_PREFIX,
    "lock_ttl": 15.0,
    "reconnect_max_delay": 10.0,
    "max_pending": 1000,
    "socket_timeout": 5.0,
}

_WIRE_VERSION = 1


def encode_bus_message(origin, channels, trigger, resync=False):
    """The text of one live-data bus message (``<prefix>:live``).

    ``{"v": 1, "o": origin, "c": [channel, ...], "t": trigger}``, plus
    ``"resync": true`` for a request to re-run everything. Every publisher
    (:class:`RedisBus`, :func:`notify_remote`) encodes with this.
    """
    message = {"v": _WIRE_VERSION, "o": origin, "c": list(channels), "t": trigger}
    if resync:
        message["resync"] = True
    return json.dumps(message, separators=(",", ":"))


def decode_bus_message(data):
    """``(origin, channels, trigger, resync)`` of a bus message (see :func:`encode_bus_message`).

    *trigger* is None when the message has none.

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


# -- connections --------------------------------------------------------------------------


def check_url(url):
    """Raise :class:`ValueError` unless *url* is a Redis URL sbio can use; return its scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"server.message_queue {redact(url)!r} is not a Redis URL: use "
                         f"redis://host:port/db (also {', '.join(s + '://' for s in _SCHEMES)})")
    return scheme


def redact(url):
    """*url* with its password replaced by ``***`` (for log lines)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _module(url):
    name = _SCHEMES[check_url(url)]
    try:
        if name == "valkey":
            import valkey as module
        else:
            import redis as module
    except ImportError:
        raise SbioError(f"server.message_queue is {redact(url)!r} but the {name} package is not "
                        f"installed (pip install 'sbio[redis]' or pip install {name})") from None
    return module


def make_client(url, socket_timeout=5.0, **options):
    """A redis-py (or valkey) client of *url* that fails fast instead of retrying.

    sbio handles reconnection itself (backoff, one log line per outage), so
    the client's own retries are turned off and every command is bounded by
    *socket_timeout* seconds.
    """
    module = _module(url)
    options = dict(options)
    options.setdefault("socket_timeout", socket_timeout)
    options.setdefault("socket_connect_timeout", socket_timeout)
    options.setdefault("retry", module.retry.Retry(module.backoff.NoBackoff(), 0))
    if "+sentinel" in urlsplit(url).scheme:
        from socketio.redis_manager import parse_redis_sentinel_url

        sentinels, service, kwargs = parse_redis_sentinel_url(url)
        kwargs.update(options)
        return module.sentinel.Sentinel(sentinels, **kwargs).master_for(service or "sbio")
    return module.Redis.from_url(url, **options)


def _require_monkey_patching():
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        raise SbioError("server.message_queue needs gevent monkey-patching: call "
                        "gevent.monkey.patch_all() before importing anything else "
                        "(sbio run and the sbio pytest plugin do it)")


class _Health:
    """What this process knows about one Redis: which of its parts are cut off.

    Logs one warning when the first part loses Redis and one info line when
    the last one is back, with what could not be delivered meanwhile.
    """

    def __init__(self, url):
        self.url = redact(url)
        self.down_parts = {}    # part -> first error
        self.since = None
        self.lost = collections.Counter()
        self.outages = 0
        self._lock = threading.Lock()

    def is_down(self, part):
        return part in self.down_parts

    @property
    def down(self):
        return bool(self.down_parts)

    def failed(self, part, exc):
        with self._lock:
            if part in self.down_parts:
                return
            first = not self.down_parts
            self.down_parts[part] = exc
            if first:
                self.since = time.monotonic()
                self.outages += 1
        if first:
            log.warning("Redis %s unreachable (%s: %s): this process keeps serving its own "
                        "clients; updates for other processes are held or dropped (logged "
                        "when it is back); reconnecting with backoff",
                        self.url, type(exc).__name__, exc)

    def recovered(self, part):
        with self._lock:
            if part not in self.down_parts:
                return
            del self.down_parts[part]
            if self.down_parts:
                return
            lost, self.lost = self.lost, collections.Counter()
            took = time.monotonic() - self.since
        detail = "; ".join(f"{what}: {n}" for what, n in sorted(lost.items())) or "nothing lost"
        log.info("Redis %s reachable again after %.1f s (%s)", self.url, took, detail)

    def count(self, what, n=1):
        """Count something that could not be delivered during the current outage."""
        with self._lock:
            self.lost[what] += n


def _backoff(attempt, cap, base=0.25):
    """Seconds to wait before reconnection attempt *attempt* (0-based): capped, jittered."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return random.uniform(ceiling / 2, ceiling)


class _Subscriber:
    """A greenlet keeping a pub/sub connection subscribed to *channels*.

    Reconnects with capped backoff and jitter, reports to the health object
    (one log line per outage), and calls ``on_connect(first)`` once the
    subscriptions are confirmed by Redis (``first`` is False after a
    reconnection). ``on_message(channel, data)`` runs in this greenlet.
    """

    #: seconds between checks of the stop flag and of the part's health
    poll = 1.0
    #: seconds between PINGs on an idle connection (finds half-open sockets)
    health_check_interval = 10

    def __init__(self, url, channels, part, on_message, on_connect=None, *,
                 reconnect_max_delay=10.0, socket_timeout=5.0, health=None):
        self.url = url
        self.channels = list(channels)
        self.part = part
        self.on_message = on_message
        self.on_connect = on_connect
        self.reconnect_max_delay = reconnect_max_delay
        self.socket_timeout = socket_timeout
        self.health = _Health(url) if health is None else health
        self.connected = gevent.event.Event()
        self._greenlet = None
        self._stopping = False

    def start(self):
        if self._greenlet is None or self._greenlet.dead:
            self._stopping = False
            self._greenlet = gevent.spawn(self._run)
            self._greenlet.name = f"sbio.cluster {self.part} subscriber"

    def stop(self, timeout=2.0):
        self._stopping = True
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=timeout)
        self.connected.clear()

    def _run(self):
        attempt = 0
        first = True
        while not self._stopping:
            client = pubsub = None
            try:
                client = make_client(self.url, self.socket_timeout,
                                     health_check_interval=self.health_check_interval)
                pubsub = client.pubsub()
                pubsub.subscribe(*self.channels)
                self._confirm(pubsub)
                attempt = 0
                self.health.recovered(self.part)
                self.connected.set()
                if self.on_connect is not None:
                    self._call(self.on_connect, first)
                first = False
                while not self._stopping:
                    if self.health.is_down(self.part):
                        # a publish failed: check the connection by starting afresh
                        raise ConnectionError("a publish failed")
                    message = pubsub.get_message(timeout=self.poll)
                    if message is not None and message["type"] == "message":
                        self._call(self.on_message, message["channel"], message["data"])
            except Exception as exc:
                self.connected.clear()
                self.health.failed(self.part, exc)
                delay = _backoff(attempt, self.reconnect_max_delay)
                attempt += 1
                log.debug("%s subscriber: %s: %s; reconnecting in %.2f s", self.part,
                          type(exc).__name__, exc, delay)
                gevent.sleep(delay)
            finally:
                self.connected.clear()
                for thing in (pubsub, client):
                    if thing is not None:
                        try:
                            thing.close()
                        except Exception:
                            pass

    def _confirm(self, pubsub):
        """Wait for Redis to confirm every subscription (bounded by socket_timeout)."""
        pending = len(self.channels)
        deadline = time.monotonic() + self.socket_timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SbioTimeoutError("Redis did not confirm the subscriptions")
            message = pubsub.get_message(timeout=left)
            if message is None:
                continue
            if message["type"] == "subscribe":
                pending -= 1
            elif message["type"] == "message":
                self._call(self.on_message, message["channel"], message["data"])

    def _call(self, func, *args):
        try:
            func(*args)
        except Exception:
            log.exception("%s subscriber: handling a message failed", self.part)


# -- socket.io: the client manager ---------------------------------------------------------


class RedisManager(RedisManagerBase):
    """python-socketio's :class:`socketio.RedisManager`, with sbio's outage handling.

    Emits, room broadcasts and disconnects are applied to this process's
    clients first, then published for the other processes (as in
    python-socketio). The differences: one pub/sub connection kept by a
    :class:`_Subscriber` (capped backoff with jitter, one log line per
    outage, stoppable), and a publish while Redis is unreachable is dropped
    at once and counted, instead of reconnecting (and logging) per emit.
    """

    name = "sbio-redis"

    def __init__(self, url, channel=f"{DEFAULT_PREFIX}:socketio", *, reconnect_max_delay=10.0,
                 socket_timeout=5.0, logger=None, health=None):
        check_url(url)
        super().__init__(url, channel=channel, logger=logger or logging.getLogger("sbio.socketio"))
        self.part = f"socket.io manager {self.host_id[:8]}"  # for the outage bookkeeping
        self.socket_timeout = socket_timeout
        self.health = _Health(url) if health is None else health
        self._client = None
        self._inbox = None
        self._thread_greenlet = None
        self._subscriber = _Subscriber(url, [channel], self.part, self._on_message,
                                       reconnect_max_delay=reconnect_max_delay,
                                       socket_timeout=socket_timeout, health=self.health)

    def initialize(self):
        """Called by python-socketio before the first connection: start listening."""
        self.start_listening()

    def start_listening(self):
        """Subscribe to the channel and apply what other processes publish. Idempotent."""
        _require_monkey_patching()
        if self._thread_greenlet is None or self._thread_greenlet.dead:
            self._inbox = gevent.queue.Queue()
            self._thread_greenlet = self.spawn_dispatch()  # python-socketio's dispatch
            self._thread_greenlet.name = "sbio.cluster socket.io dispatch"
        self._subscriber.start()

    def stop_listening(self):
        """Unsubscribe and stop the greenlets (the server is stopping)."""
        self._subscriber.stop()
        greenlet, self._thread_greenlet = self._thread_greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=2)
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def connected_event(self):
        """Set while the pub/sub connection is subscribed."""
        return self._subscriber.connected

    def _on_message(self, channel, data):
        self._inbox.put(data)

    def listen_messages(self):
        inbox = self._inbox
        while True:
            yield inbox.get()

    def publish_message(self, data):
        if self.health.is_down(self.part):
            self.health.count("socket.io messages not sent to other processes")
            return
        try:
            if self._client is None:
                self._client = make_client(self.redis_url, self.socket_timeout)
            self._client.publish(self.channel, self.json.dumps(data))
        except Exception as exc:
            self.health.failed(self.part, exc)
            self.health.count("socket.io messages not sent to other processes")


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

    def __init__(self, url, channel=f"{DEFAULT_PREFIX}:live", *, max_pending=1000,
                 reconnect_max_delay=10.0, socket_timeout=5.0, resync_on_reconnect=True,
                 health=None):
        super().__init__()
        check_url(url)
        self.url = url
        self.channel = channel
        self.max_pending = int(max_pending)
        self.socket_timeout = socket_timeout
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
        self._out = collections.deque()   # (channels, trigger); append/popleft thread-safe
        self._held = {}                   # channel -> trigger, while Redis is unreachable
        self._held_overflow = False
        self._client = None
        self._wake = None
        self._async = None
        self._hub_thread = None
        self._publisher = None
        self._subscriber = _Subscriber(url, [channel], self.part, self._on_message,
                                       self._on_connect,
                                       reconnect_max_delay=reconnect_max_delay,
                                       socket_timeout=socket_timeout, health=self.health)

    def __repr__(self):
        return f"<RedisBus {redact(self.url)} {self.channel}>"

    @property
    def reach_key(self):
        """Buses on one URL and channel reach each other's subscribers (through Redis)."""
        return ("redis", self.url, self.channel)

    @property
    def running(self):
        return self._publisher is not None

    @property
    def connected_event(self):
        """Set while the bus is subscribed (notifications from other processes arrive)."""
        return self._subscriber.connected

    # -- Bus interface ------------------------------------------------------------------

    def publish(self, channels, trigger):
        """Deliver here now; send to the other processes from the publisher greenlet."""
        channels = tuple(channels)
        self.deliver(channels, trigger)
        if self._publisher is None:
            log.warning("RedisBus %s is not running: notification of %s not sent to the other "
                        "processes", self.channel, list(channels))
            return
        self._out.append((channels, trigger))
        if threading.get_ident() == self._hub_thread:
            self._wake.set()
        else:
            self._async.send()  # thread-safe; wakes the publisher in the hub's thread

    # -- lifecycle ------------------------------------------------------------------------

    def start(self):
        """Start the publisher and subscriber greenlets (in the calling thread's hub)."""
        if self._publisher is not None:
            return self
        _require_monkey_patching()
        hub = gevent.get_hub()
        self._hub_thread = threading.get_ident()
        self._wake = gevent.event.Event()
        self._async = hub.loop.async_()
        self._async.start(self._wake.set)
        self._async.ref = False
        self._publisher = gevent.spawn(self._publish_loop)
        self._publisher.name = "sbio.cluster live publisher"
        self._subscriber.start()
        return self

    def stop(self, timeout=2.0):
        """Send what is queued (within *timeout*), then stop both greenlets."""
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        self._subscriber.stop()
        if self._out and not self.health.is_down(self.part):
            with gevent.Timeout(timeout, False):
                self._send_queued()
        publisher.kill(block=True, timeout=timeout)
        if self._out or self._held:
            log.warning("RedisBus %s stopped with %d notification(s) not sent to the other "
                        "processes", self.channel, len(self._out) + len(self._held))
        self._out.clear()
        self._held.clear()
        self._async.stop()
        self._async.close()
        self._async = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self):
        self.stop()
        super().close()

    # -- sending ----------------------------------------------------------------------------

    def _publish_loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            self._send_queued()

    def _send_queued(self):
        out = self._out
        while out:
            batch = []
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

    def _hold(self, batch):
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

    def _on_connect(self, first):
        # Also on the first connection: a process that started while Redis
        # was down may hold notifications and serve subscriptions already.
        # Notifications held during the outage go out first, then this process
        # catches up with what it missed.
        held, self._held = self._held, {}
        overflow, self._held_overflow = self._held_overflow, False
        if overflow:
            self._send_resync_request()
        elif held:
            by_trigger = collections.defaultdict(list)
            for name, trigger in held.items():
                by_trigger[trigger].append(name)
            for trigger, names in by_trigger.items():
                self._out.append((tuple(names), trigger))
            self.metrics["republished"] += len(held)
            log.info("RedisBus %s: publishing %d channel(s) notified during the outage",
                     self.channel, len(held))
            self._wake.set()
        if self.resync_on_reconnect:
            self.resync_local()

    def _send_resync_request(self):
        try:
            if self._client is None:
                self._client = make_client(self.url, self.socket_timeout)
            self._client.publish(self.channel, encode_bus_message(self.origin, [], RESYNC_TRIGGER,
                                                                  resync=True))
        except Exception as exc:
            self.health.failed(self.part, exc)
            self._held_overflow = True

    # -- receiving --------------------------------------------------------------------------

    def _on_message(self, channel, data):
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

    def resync_local(self, trigger=RESYNC_TRIGGER):
        """Re-run every subscription of this process once (pushes only what changed)."""
        self.metrics["resyncs"] += 1
        for data in live_data_on(self):
            data.resync(trigger)


# -- singleton tasks: the lock -------------------------------------------------------------

# KEYS[1] lock key; ARGV[1] token; ARGV[2] ttl in ms. -> {1, 0} taken, or {0, pttl}
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, 0} end
return {0, redis.call('pttl', KEYS[1])}
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisLocks:
    """The lock backend of singleton :class:`~sbio.DaemonTask`\\ s (``Lifecycle.lock_backend``).

    ``acquire(name) -> (lease, retry_after)``: *lease* is ``None`` when
    another process holds the lock, and *retry_after* says when to try
    again (when it may expire, at most ``ttl / 3`` seconds). A lease has ``ttl``, ``valid_until`` (a ``time.monotonic()``
    deadline, computed from when the request was sent so that it ends before
    the key expires in Redis), ``renew() -> bool`` (False: the lock was lost)
    and ``release()``. Keys are ``<prefix>:lock:<name>`` set with
    ``SET NX PX`` and a random token; renewal and release compare the token
    in a Lua script.

    :param ttl: seconds the lock lives without renewal; a dead holder is
        replaced within this time.
    """

    def __init__(self, url, prefix=DEFAULT_PREFIX, ttl=15.0, socket_timeout=5.0, *, health=None):
        check_url(url)
        if ttl <= 0:
            raise ValueError(f"lock ttl must be > 0, got {ttl!r}")
        self.part = f"task locks {uuid.uuid4().hex[:8]}"  # for the outage bookkeeping
        self.url = url
        self.prefix = prefix
        self.ttl = float(ttl)
        self.socket_timeout = min(socket_timeout, self.ttl / 3)
        self.health = _Health(url) if health is None else health
        self._client = None
        self._scripts = None

    def __repr__(self):
        return f"<RedisLocks {redact(self.url)} {self.prefix}:lock:* ttl={self.ttl}>"

    def key(self, name):
        return f"{self.prefix}:lock:{name}"

    def _script(self, which):
        if self._client is None:
            self._client = make_client(self.url, self.socket_timeout)
            self._scripts = {name: self._client.register_script(text) for name, text in
                             (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE))}
        return self._scripts[which]

    def _run(self, which, key, *args):
        try:
            result = self._script(which)(keys=[key], args=list(args))
        except Exception as exc:
            self.health.failed(self.part, exc)
            raise
        self.health.recovered(self.part)
        return result

    def acquire(self, name):
        key = self.key(name)
        token = uuid.uuid4().hex
        ttl_ms = max(1, int(self.ttl * 1000))
        sent = time.monotonic()
        taken, pttl = self._run("acquire", key, token, ttl_ms)
        if taken:
            return _Lease(self, key, token, sent + self.ttl), 0.0
        # Wake when the lock may expire, and at least every ttl/3 so that a
        # lock released by a stopping holder is taken over soon.
        if pttl is None or pttl < 0:  # no expiry (set by hand) or just gone
            return None, min(1.0, self.ttl / 4)
        return None, min(max(pttl / 1000 + 0.01, 0.01), self.ttl / 3)

    def holder(self, name):
        """The token holding the lock of *name* (or ``None``): for tests and debugging."""
        if self._client is None:
            self._script("acquire")
        value = self._client.get(self.key(name))
        return value.decode() if isinstance(value, bytes) else value

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = self._scripts = None


class _Lease:
    __slots__ = ("locks", "key", "token", "valid_until")

    def __init__(self, locks, key, token, valid_until):
        self.locks = locks
        self.key = key
        self.token = token
        self.valid_until = valid_until

    @property
    def ttl(self):
        return self.locks.ttl

    def renew(self):
        sent = time.monotonic()
        held = self.locks._run("renew", self.key, self.token, max(1, int(self.ttl * 1000)))
        if held:
            self.valid_until = sent + self.ttl
        return bool(held)

    def release(self):
        self.valid_until = 0.0
        self.locks._run("release", self.key, self.token)

    def __repr__(self):
        return f"<lease {self.key}>"


# -- the cluster of one server ---------------------------------------------------------------


class Cluster:
    """The Redis pieces of one :class:`~sbio.Server` (``server.cluster``).

    Built by the server when ``server.message_queue`` is set (no I/O: nothing
    connects before :meth:`start`); started before the server's lifecycle
    (so singleton tasks find their lock) and stopped after it. Every piece
    belongs to this server alone, including the outage bookkeeping (one
    warning per outage for the whole cluster object).

    :param url: the Redis URL (``server.message_queue``).
    :param config: the ``[cluster]`` section (see :data:`DEFAULTS`).
    """

    def __init__(self, url, config=None):
        _module(url)  # a bad URL or a missing client library fails here, not in a greenlet
        settings = dict(DEFAULTS)
        settings.update({k: v for k, v in (config or {}).items() if k in DEFAULTS})
        self.url = url
        self.settings = settings
        self.prefix = settings["prefix"]
        self.health = _Health(url)
        timeouts = {"reconnect_max_delay": float(settings["reconnect_max_delay"]),
                    "socket_timeout": float(settings["socket_timeout"])}
        #: the python-socketio client manager
        self.client_manager = RedisManager(url, channel=f"{self.prefix}:socketio",
                                           health=self.health, **timeouts)
        #: the lock backend of singleton tasks
        self.locks = RedisLocks(url, self.prefix, float(settings["lock_ttl"]),
                                float(settings["socket_timeout"]), health=self.health)
        #: the live-data bus of this server (running between start and stop)
        self.bus = RedisBus(url, self.bus_channel, max_pending=int(settings["max_pending"]),
                            health=self.health, **timeouts)
        self._started = False
        self._lifecycle = None
        self._previous_locks = None

    def __repr__(self):
        return f"<Cluster {redact(self.url)} prefix={self.prefix!r}>"

    @property
    def bus_channel(self):
        return f"{self.prefix}:live"

    def start(self, server):
        """Listen for socket.io messages, start the bus, give the lifecycle its lock.

        The lock goes to the server's lifecycle only if it is not running yet
        (this server is the one starting it); a lifecycle another server runs
        keeps that server's lock.
        """
        _require_monkey_patching()
        if self._started:
            return
        self._started = True
        server.sio.manager_initialized = True  # python-socketio would do it on first connect
        self.client_manager.start_listening()
        self.bus.start()
        if not server.lifecycle.running:
            self._lifecycle = server.lifecycle
            self._previous_locks = self._lifecycle.lock_backend
            self._lifecycle.lock_backend = self.locks
        # A process that starts listening before it is subscribed would miss
        # what the others publish meanwhile: wait (bounded) for Redis first.
        if self.wait_connected(float(self.settings["socket_timeout"])):
            log.info("cluster: sharing emits, notifications and singleton tasks through "
                     "Redis %s (prefix %r)", redact(self.url), self.prefix)
        else:
            log.warning("cluster: Redis %s not reachable yet; serving this process's clients "
                        "and connecting in the background", redact(self.url))

    def stop(self):
        """Undo :meth:`start` (after the lifecycle stopped). Idempotent."""
        if not self._started:
            return
        self._started = False
        try:
            if self._lifecycle is not None and self._lifecycle.lock_backend is self.locks:
                self._lifecycle.lock_backend = self._previous_locks
            self._lifecycle = None
            self.bus.close()
        finally:
            self.client_manager.stop_listening()
            self.locks.close()

    def wait_connected(self, timeout=None):
        """Block until the bus and the client manager are subscribed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in (self.client_manager.connected_event, self.bus.connected_event):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(left):
                return False
        return True


def configure(url, lifecycle=None, *, prefix=DEFAULT_PREFIX, lock_ttl=DEFAULTS["lock_ttl"]):
    """Give *lifecycle* (the process-wide one by default) a Redis lock for singleton tasks.

    For a process that runs :class:`~sbio.DaemonTask`\\ s without a server
    (a worker); a server with ``server.message_queue`` does this itself.
    Returns the :class:`RedisLocks`.
    """
    if lifecycle is None:
        from ..tasks import lifecycle
    locks = RedisLocks(url, prefix, lock_ttl)
    lifecycle.lock_backend = locks
    return locks


# -- external emitters -------------------------------------------------------------------------

_remote_clients = {}
_remote_lock = threading.Lock()


def notify_remote(url, channels, trigger=None, *, prefix=DEFAULT_PREFIX, timeout=5.0):
    """Notify *channels* on every sbio process sharing the Redis at *url*.

    For programs that are not sbio servers (cron jobs, workers, scripts):
    the subscriptions of those channels re-run in every process of the
    cluster, exactly as after :func:`sbio.notify`. Needs neither gevent nor
    a running server; the connection is kept for the next call.

    :param url: the cluster's ``server.message_queue``.
    :param channels: a channel name or model class, or an iterable of them.
    :param trigger: pushed with the updates (``"manual"`` by default).
    :param prefix: the cluster's ``[cluster] prefix``.
    :param timeout: seconds the Redis command may take.
    :return: how many sbio processes received it (0: none was listening).
    :raises redis.exceptions.ConnectionError: Redis is unreachable (nothing
        is sent; retrying is up to the caller).
    """
    names = channel_names(channels)
    if not names:
        return 0
    key = (url, timeout)
    with _remote_lock:
        client = _remote_clients.get(key)
        if client is None:
            client = _remote_clients[key] = make_client(url, timeout)
    message = encode_bus_message("remote:" + uuid.uuid4().hex, names,
                                 MANUAL_TRIGGER if trigger is None else str(trigger))
    return client.publish(f"{prefix}:live", message)
