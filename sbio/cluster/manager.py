"""socket.io across processes: python-socketio's Redis client manager (``<prefix>:socketio``)."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gevent.event
import gevent.queue
from gevent.greenlet import Greenlet

from ..adapter import RedisManagerBase
from .connection import (
    Client,
    _Health,
    _require_monkey_patching,
    _Subscriber,
    check_url,
    make_client,
    setting,
)

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

    def __init__(self, url: str, channel: str | None = None, *,
                 reconnect_max_delay: float | None = None, socket_timeout: float | None = None,
                 logger: logging.Logger | None = None, health: _Health | None = None) -> None:
        # None: the [cluster] defaults (channel <prefix>:socketio)
        check_url(url)
        channel = f"{setting(None, 'prefix')}:socketio" if channel is None else channel
        socket_timeout = setting(socket_timeout, "socket_timeout")
        super().__init__(url, channel=channel, logger=logger or logging.getLogger("sbio.socketio"))
        self.part = f"socket.io manager {self.host_id[:8]}"  # for the outage bookkeeping
        self.socket_timeout = socket_timeout
        self.health = _Health(url) if health is None else health
        self._client: Client | None = None
        # what the subscriber received, for python-socketio's dispatch greenlet
        # (made by start_listening, before the subscriber starts)
        self._inbox: gevent.queue.Queue[Any] | None = None
        self._thread_greenlet: Greenlet[..., Any] | None = None
        self._subscriber = _Subscriber(url, [channel], self.part, self._on_message,
                                       reconnect_max_delay=reconnect_max_delay,
                                       socket_timeout=socket_timeout, health=self.health)

    def initialize(self) -> None:
        """Called by python-socketio before the first connection: start listening."""
        self.start_listening()

    def start_listening(self) -> None:
        """Subscribe to the channel and apply what other processes publish. Idempotent."""
        _require_monkey_patching()
        if self._thread_greenlet is None or self._thread_greenlet.dead:
            self._inbox = gevent.queue.Queue()
            self._thread_greenlet = self.spawn_dispatch()  # python-socketio's dispatch
            self._thread_greenlet.name = "sbio.cluster socket.io dispatch"
        self._subscriber.start()

    def stop_listening(self) -> None:
        """Unsubscribe and stop the greenlets (the server is stopping)."""
        self._subscriber.stop()
        greenlet, self._thread_greenlet = self._thread_greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=2)
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def connected_event(self) -> gevent.event.Event:
        """Set while the pub/sub connection is subscribed."""
        return self._subscriber.connected

    def _on_message(self, channel: object, data: Any) -> None:
        inbox = self._inbox
        if inbox is not None:
            inbox.put(data)

    def listen_messages(self) -> Iterator[Any]:
        inbox = self._inbox
        assert inbox is not None, "start_listening() made it before spawning the dispatch"
        while True:
            yield inbox.get()

    def publish_message(self, data: Any) -> None:
        # Encoded first, outside the try: a value that cannot be sent as JSON
        # (TypeError, ValueError naming it) is the emitter's error, raised to
        # it, not a Redis outage.
        text = self.json.dumps(data)
        if self.health.is_down(self.part):
            self.health.count("socket.io messages not sent to other processes")
            return
        try:
            if self._client is None:
                self._client = make_client(self.redis_url, self.socket_timeout)
            self._client.publish(self.channel, text)
        except Exception as exc:
            self.health.failed(self.part, exc)
            self.health.count("socket.io messages not sent to other processes")
