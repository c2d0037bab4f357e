"""The Redis lock behind ``DaemonTask(..., singleton=True)`` (keys ``<prefix>:lock:<name>``)."""
import time
import uuid
from typing import Any

from ..tasks import Lifecycle
from .connection import Client, _Health, check_url, make_client, redact, setting

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
    again (when it may expire, at most ``ttl / 3`` seconds). A lease has
    ``ttl``, ``valid_until`` (a ``time.monotonic()`` deadline, computed from
    when the request was sent so that it ends before the key expires in
    Redis), ``renew() -> bool`` (False: the lock was lost) and ``release()``.
    Keys are ``<prefix>:lock:<name>`` set with ``SET NX PX`` and a random
    token; renewal and release compare the token in a Lua script.

    :param ttl: seconds the lock lives without renewal; a dead holder is
        replaced within this time.

    *prefix*, *ttl* and *socket_timeout* default (None) to ``[cluster] prefix``,
    ``lock_ttl`` and ``socket_timeout``.
    """

    def __init__(self, url: str, prefix: str | None = None, ttl: float | None = None,
                 socket_timeout: float | None = None, *, health: _Health | None = None) -> None:
        check_url(url)
        prefix = setting(prefix, "prefix")
        ttl = setting(ttl, "lock_ttl")
        socket_timeout = setting(socket_timeout, "socket_timeout")
        if ttl <= 0:
            raise ValueError(f"lock ttl must be > 0, got {ttl!r}")
        self.part = f"task locks {uuid.uuid4().hex[:8]}"  # for the outage bookkeeping
        self.url = url
        self.prefix: str = prefix
        self.ttl = float(ttl)
        self.socket_timeout: float = min(socket_timeout, self.ttl / 3)
        self.health = _Health(url) if health is None else health
        self._client: Client | None = None
        self._scripts: dict[str, Any] = {}  # name -> the client's registered Lua script

    def __repr__(self) -> str:
        return f"<RedisLocks {redact(self.url)} {self.prefix}:lock:* ttl={self.ttl}>"

    def key(self, name: str) -> str:
        """The Redis key of the lock of *name*."""
        return f"{self.prefix}:lock:{name}"

    def _connect(self) -> Client:
        if self._client is None:
            self._client = make_client(self.url, self.socket_timeout)
            self._scripts = {name: self._client.register_script(text) for name, text in
                             (("acquire", _ACQUIRE), ("renew", _RENEW), ("release", _RELEASE))}
        return self._client

    def _script(self, which: str) -> Any:
        self._connect()
        return self._scripts[which]

    def _run(self, which: str, key: str, *args: object) -> Any:
        try:
            result = self._script(which)(keys=[key], args=list(args))
        except Exception as exc:
            self.health.failed(self.part, exc)
            raise
        self.health.recovered(self.part)
        return result

    def acquire(self, name: str) -> tuple["_Lease | None", float]:
        """``(lease, retry_after)``: see the class's description."""
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

    def holder(self, name: str) -> str | None:
        """The token holding the lock of *name* (or ``None``): for tests and debugging."""
        value = self._connect().get(self.key(name))
        return value.decode() if isinstance(value, bytes) else value

    def close(self) -> None:
        """Close the connection (a later call connects again)."""
        if self._client is not None:
            self._client.close()
            self._client = None
            self._scripts = {}


class _Lease:
    __slots__ = ("locks", "key", "token", "valid_until")

    def __init__(self, locks: RedisLocks, key: str, token: str, valid_until: float) -> None:
        self.locks = locks
        self.key = key
        self.token = token
        self.valid_until = valid_until

    @property
    def ttl(self) -> float:
        return self.locks.ttl

    def renew(self) -> bool:
        sent = time.monotonic()
        held = self.locks._run("renew", self.key, self.token, max(1, int(self.ttl * 1000)))
        if held:
            self.valid_until = sent + self.ttl
        return bool(held)

    def release(self) -> None:
        self.valid_until = 0.0
        self.locks._run("release", self.key, self.token)

    def __repr__(self) -> str:
        return f"<lease {self.key}>"



def configure(url: str, lifecycle: Lifecycle | None = None, *, prefix: str | None = None,
              lock_ttl: float | None = None) -> RedisLocks:
    """Give *lifecycle* (the process-wide one by default) a Redis lock for singleton tasks.

    For a process that runs :class:`~sbio.DaemonTask`\\ s without a server
    (a worker); a server with ``server.message_queue`` does this itself.
    *prefix* and *lock_ttl* default to the ``[cluster]`` ones.
    Returns the :class:`RedisLocks`.
    """
    if lifecycle is None:
        from ..tasks import lifecycle as process_lifecycle

        lifecycle = process_lifecycle
    locks = RedisLocks(url, prefix, lock_ttl)
    lifecycle.lock_backend = locks
    return locks
