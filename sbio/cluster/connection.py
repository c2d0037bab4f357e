"""Redis connections of a cluster: URLs, clients, the outage bookkeeping, the subscriber greenlet.

Every piece of :mod:`sbio.cluster` connects through :func:`make_client` and
keeps one pub/sub connection with a :class:`_Subscriber` (capped backoff
with jitter, one log line per outage through :class:`_Health`).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
import gevent.event
from gevent.greenlet import Greenlet

from ..config import section_defaults
from ..errors import SbioError, SbioTimeoutError

log = logging.getLogger("sbio.cluster")  # one logger for the package, as before the split


_SCHEMES = {"redis": "redis", "rediss": "redis", "unix": "redis",
            "valkey": "valkey", "valkeys": "valkey",
            "redis+sentinel": "redis", "valkey+sentinel": "valkey"}

#: A redis-py ``Redis`` or a valkey ``Valkey`` client (both optional packages).
Client = Any


def setting(value: Any, key: str) -> Any:
    """*value*, or when it is None the ``[cluster]`` default of *key* from the configspec.

    The configspec is the one place the defaults are written; every keyword
    argument of this package that is a ``[cluster]`` key defaults to None.
    """
    return section_defaults("cluster")[key] if value is None else value


def __getattr__(name: str) -> Any:
    # DEFAULTS and DEFAULT_PREFIX are read from the configspec on first use, not on import.
    if name == "DEFAULTS":
        return section_defaults("cluster")
    if name == "DEFAULT_PREFIX":
        return section_defaults("cluster")["prefix"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- connections --------------------------------------------------------------------------


def check_url(url: str) -> str:
    """Raise :class:`ValueError` unless *url* is a Redis URL sbio can use; return its scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"server.message_queue {redact(url)!r} is not a Redis URL: use "
                         f"redis://host:port/db (also {', '.join(s + '://' for s in _SCHEMES)})")
    return scheme


def redact(url: str) -> str:
    """*url* with its password replaced by ``***`` (for log lines)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _module(url: str) -> ModuleType:
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


def make_client(url: str, socket_timeout: float | None = None, **options: Any) -> Client:
    """A redis-py (or valkey) client of *url* that fails fast instead of retrying.

    sbio handles reconnection itself (backoff, one log line per outage), so
    the client's own retries are turned off and every command is bounded by
    *socket_timeout* seconds (``[cluster] socket_timeout`` by default).
    """
    module = _module(url)
    socket_timeout = setting(socket_timeout, "socket_timeout")
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


def _require_monkey_patching() -> None:
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

    def __init__(self, url: str) -> None:
        self.url = redact(url)
        self.down_parts: dict[str, BaseException] = {}  # part -> first error
        self.since = 0.0  # time.monotonic() when the outage began
        self.lost: collections.Counter[str] = collections.Counter()
        self.outages = 0
        self._lock = threading.Lock()

    def is_down(self, part: str) -> bool:
        return part in self.down_parts

    @property
    def down(self) -> bool:
        return bool(self.down_parts)

    def failed(self, part: str, exc: BaseException) -> None:
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

    def recovered(self, part: str) -> None:
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

    def count(self, what: str, n: int = 1) -> None:
        """Count something that could not be delivered during the current outage."""
        with self._lock:
            self.lost[what] += n


def _backoff(attempt: int, cap: float, base: float = 0.25) -> float:
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

    def __init__(self, url: str, channels: Iterable[str], part: str,
                 on_message: Callable[[Any, Any], object],
                 on_connect: Callable[[bool], object] | None = None, *,
                 reconnect_max_delay: float | None = None, socket_timeout: float | None = None,
                 health: _Health | None = None) -> None:
        self.url = url
        self.channels = list(channels)
        self.part = part
        self.on_message = on_message
        self.on_connect = on_connect
        self.reconnect_max_delay = setting(reconnect_max_delay, "reconnect_max_delay")
        self.socket_timeout = setting(socket_timeout, "socket_timeout")
        self.health = _Health(url) if health is None else health
        self.connected = gevent.event.Event()
        self._greenlet: Greenlet[[], None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._stopping = False
            self._greenlet = gevent.spawn(self._run)
            self._greenlet.name = f"sbio.cluster {self.part} subscriber"

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=timeout)
        self.connected.clear()

    def _run(self) -> None:
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
                        with contextlib.suppress(Exception):  # closing a dead connection
                            thing.close()

    def _confirm(self, pubsub: Any) -> None:
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

    def _call(self, func: Callable[..., object], *args: Any) -> None:
        try:
            func(*args)
        except Exception:
            log.exception("%s subscriber: handling a message failed", self.part)
