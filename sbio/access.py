"""The access log: one INFO line per connection and, opt-in, one per event.

Logger ``sbio.access`` (:data:`LOGGER`), set by ``[logging] access``
(docs/configuration.md):

``connections`` (the default)
    ``connect sid=... namespace=/chat remote=10.0.0.7`` when a connection to
    a namespace is accepted, and ``disconnect sid=... namespace=/chat
    remote=10.0.0.7 reason="client disconnect" duration=12.3s`` when it ends;
``events``
    those, and ``event sid=... namespace=/chat event=login code=ok ms=1.8``
    for each inbound event (``code`` is ``ok`` or the error code of the
    answer: ``forbidden``, ``rate_limited`` ...);
``off``
    nothing.

Clients decide how many lines there are, so the lines of one server are
bounded by ``[logging] access_rate`` lines a second (a token bucket holding
one second's worth): past it lines are counted instead of logged, a warning
says so once, and the count is logged with the next line that goes out (or
when the server stops). The HTTP requests gevent's server answers are logged
at DEBUG on ``sbio.access.http`` (shown with ``sbio run --debug``).
"""
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from .config import section_defaults
from .limits import TokenBucket
from .protocol import short_repr

__all__ = ["AccessLog", "LOGGER", "ACCESS_MODES"]

#: The name of the access logger.
LOGGER = "sbio.access"
#: The values of ``[logging] access``.
ACCESS_MODES = ("off", "connections", "events")

log = logging.getLogger(LOGGER)


# event names logged as they are; any other is logged as its (shortened) repr
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")


def _quote(text: Any) -> str:
    text = str(text)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AccessLog:
    """The access log of one server, from its ``[logging]`` section.

    :attr:`connections` and :attr:`events` say what is logged; the callers
    check :attr:`events` before they take the time of an event, so with
    ``access = connections`` an event costs one attribute read.
    """

    __slots__ = ("connections", "events", "rate", "_bucket", "_dropped")

    def __init__(self, logging_config: Mapping[str, Any] | None = None) -> None:
        cfg = section_defaults("logging")
        cfg.update(logging_config or {})
        mode = str(cfg["access"]).lower()
        if mode not in ACCESS_MODES:
            raise ValueError(f"logging.access must be one of {', '.join(ACCESS_MODES)}, "
                             f"got {cfg['access']!r}")
        self.connections = mode != "off"
        self.events = mode == "events"
        self.rate = float(cfg["access_rate"])
        self._bucket = TokenBucket(self.rate, max(1.0, self.rate)) if self.rate > 0 else None
        self._dropped = 0

    def _line(self, msg: str, *args: Any) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        bucket = self._bucket
        if bucket is not None and not bucket.take():
            if not self._dropped:
                log.warning("more than %g access lines a second (logging.access_rate): "
                            "counting them instead of logging them", self.rate)
            self._dropped += 1
            return
        if self._dropped:
            self.flush()
        log.info(msg, *args)

    def flush(self) -> None:
        """Log how many lines were left out, if any (the server calls it when it stops)."""
        dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning("%d access line(s) not logged (over logging.access_rate, %g a second)",
                        dropped, self.rate)

    def connected(self, instance: Any) -> None:
        """A connection to a namespace was accepted (*instance*: its Namespace)."""
        instance._sbio_connected_at = time.monotonic()
        if self.connections:
            self._line("connect sid=%s namespace=%s remote=%s", instance.sid,
                       instance.namespace, instance.environ.get("REMOTE_ADDR"))

    def disconnected(self, instance: Any, reason: Any) -> None:
        """The connection of *instance* ended, for *reason* (socket.io's)."""
        if self.connections:
            since = getattr(instance, "_sbio_connected_at", None)
            duration = "?" if since is None else f"{time.monotonic() - since:.1f}"
            self._line("disconnect sid=%s namespace=%s remote=%s reason=%s duration=%ss",
                       instance.sid, instance.namespace, instance.environ.get("REMOTE_ADDR"),
                       _quote(reason), duration)

    def event(self, sid: Any, namespace: str, event: Any, code: str, started: float) -> None:
        """An event was answered with *code*; *started* is its ``time.perf_counter()``."""
        name = event if type(event) is str and _PLAIN_NAME.fullmatch(event) \
            else short_repr(event)
        self._line("event sid=%s namespace=%s event=%s code=%s ms=%.1f", sid, namespace,
                   name, code, (time.perf_counter() - started) * 1000.0)
