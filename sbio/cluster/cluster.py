"""The Redis pieces of one server: :class:`Cluster` (``server.cluster``)."""
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import section_defaults
from ..tasks import Lifecycle, LockBackend
from .bus import RedisBus
from .connection import _Health, _module, _require_monkey_patching, redact
from .locks import RedisLocks
from .manager import RedisManager

log = logging.getLogger("sbio.cluster")  # one logger for the package, as before the split


# -- the cluster of one server ---------------------------------------------------------------


class Cluster:
    """The Redis pieces of one :class:`~sbio.Server` (``server.cluster``).

    Built by the server when ``server.message_queue`` is set (no I/O: nothing
    connects before :meth:`start`); started before the server's lifecycle
    (so singleton tasks find their lock) and stopped after it. Every piece
    belongs to this server alone, including the outage bookkeeping (one
    warning per outage for the whole cluster object).

    :param url: the Redis URL (``server.message_queue``).
    :param config: the ``[cluster]`` section (missing keys: the configspec's defaults).
    """

    def __init__(self, url: str, config: Mapping[str, Any] | None = None) -> None:
        _module(url)  # a bad URL or a missing client library fails here, not in a greenlet
        settings = section_defaults("cluster")
        settings.update({k: v for k, v in (config or {}).items() if k in settings})
        self.url = url
        self.settings = settings
        self.prefix = settings["prefix"]
        self.health = _Health(url)
        reconnect_max_delay = float(settings["reconnect_max_delay"])
        socket_timeout = float(settings["socket_timeout"])
        #: the python-socketio client manager
        self.client_manager = RedisManager(url, channel=f"{self.prefix}:socketio",
                                           health=self.health,
                                           reconnect_max_delay=reconnect_max_delay,
                                           socket_timeout=socket_timeout)
        #: the lock backend of singleton tasks
        self.locks = RedisLocks(url, self.prefix, float(settings["lock_ttl"]),
                                socket_timeout, health=self.health)
        #: the live-data bus of this server (running between start and stop)
        self.bus = RedisBus(url, self.bus_channel, max_pending=int(settings["max_pending"]),
                            health=self.health, reconnect_max_delay=reconnect_max_delay,
                            socket_timeout=socket_timeout)
        self._started = False
        self._lifecycle: Lifecycle | None = None
        self._previous_locks: LockBackend | None = None

    def __repr__(self) -> str:
        return f"<Cluster {redact(self.url)} prefix={self.prefix!r}>"

    @property
    def bus_channel(self) -> str:
        """The pub/sub channel of the live-data bus: ``<prefix>:live``."""
        return f"{self.prefix}:live"

    def start(self, server: Any) -> None:
        """Listen for socket.io messages, start the bus, give the lifecycle its lock.

        The lock goes to the server's lifecycle only if it is not running yet
        (this server is the one starting it); a lifecycle another server runs
        keeps that server's lock. *server* is the :class:`sbio.Server` (typed
        ``Any``: sbio.server imports this package).
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

    def stop(self) -> None:
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

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the bus and the client manager are subscribed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in (self.client_manager.connected_event, self.bus.connected_event):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(left):
                return False
        return True
