"""Per-connection limits: rate limits, the guard of one connection, its log limiter.

Everything here is plain bookkeeping, free of IO; :mod:`sbio.dispatch` asks
it whether an inbound event may run, and :mod:`sbio.adapter` refuses, closes
and spawns accordingly. The limits are ``[server]`` keys of the configuration
(``docs/configuration.md``):

``max_calls_in_flight``
    handler calls of one connection running at once, per namespace; past it
    a call is answered ``rate_limited`` at once, without a greenlet.
``rate_limit`` / ``rate_limit_burst``
    a token bucket per connection for inbound events (off by default).
``rate_limit_close_after``
    refused events within :data:`ABUSE_WINDOW` seconds that close the
    connection ("sustained abuse").

:func:`rate_limit` gives one handler a bucket of its own, per connection.
"""
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .config import section_defaults
from .errors import BadJSON
from .jsonenc import JSONProvider

__all__ = ["rate_limit", "TokenBucket", "LogLimiter", "ConnectionGuard", "Limits",
           "StrictJSON", "BadJSON", "ABUSE_WINDOW"]

#: Seconds over which refused events are counted against ``rate_limit_close_after``.
ABUSE_WINDOW = 10.0

_clock = time.monotonic

_F = TypeVar("_F", bound=Callable[..., Any])


class TokenBucket:
    """*rate* tokens a second, at most *burst* saved up; :meth:`take` spends one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = _clock()

    def take(self) -> bool:
        """True (and one token spent) when a token is left, else False."""
        tokens = self.tokens
        if tokens < 1.0:
            now = _clock()
            tokens = min(self.burst, tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if tokens < 1.0:
                self.tokens = tokens
                return False
        self.tokens = tokens - 1.0
        return True


def rate_limit(per_second: float, burst: int | None = None) -> Callable[[_F], _F]:
    """Limit calls of one handler to *per_second* per connection, *burst* at once.

    ::

        @sbio.rate_limit(1, burst=5)
        def on_login(self, user, password): ...

    Each connection gets its own bucket of *burst* calls (default: one
    second's worth, at least 1), refilled at *per_second*. A call past it is
    answered with the error code ``rate_limited`` (an acked call) or an
    ``sbio:error`` push, and counts towards ``server.rate_limit_close_after``.
    The connection-wide ``server.rate_limit`` still applies as well.
    """
    per_second = float(per_second)
    if not per_second > 0:
        raise ValueError(f"rate_limit: per_second must be > 0, got {per_second!r}")
    if burst is None:
        burst = max(1, int(per_second))
    elif int(burst) < 1:
        raise ValueError(f"rate_limit: burst must be >= 1, got {burst!r}")

    limit = (per_second, int(burst))

    def mark(func: _F) -> _F:
        func._sbio_rate_limit = limit  # type: ignore[attr-defined]  # a mark on the function
        return func

    return mark


class LogLimiter:
    """Logs the first message of each kind from one connection and counts the repeats.

    A repeat within :attr:`interval` seconds of the last one logged is only
    counted; the next one logged after that says how many were left out, and
    :meth:`flush` (at disconnect) logs what is still counted. At most
    :attr:`max_kinds` kinds are tracked; further kinds share one count.
    """

    interval = 60.0
    max_kinds = 32

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        self._kinds: dict[str, list[float]] = {}  # kind -> [left out, time last logged]

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: object,
            exc_info: Any = None) -> None:
        """``logger.log(level, msg, *args)`` unless *kind* was logged in the last interval."""
        now = _clock()
        kinds = self._kinds
        entry = kinds.get(kind)
        if entry is None:
            if len(kinds) >= self.max_kinds:
                kind = "other errors"
                entry = kinds.get(kind)
                if entry is None:
                    entry = kinds[kind] = [0, now]
                entry[0] += 1
                return
            kinds[kind] = [0, now]
            logger.log(level, msg, *args, exc_info=exc_info)
            return
        if now - entry[1] < self.interval:
            entry[0] += 1
            return
        left_out, entry[0], entry[1] = entry[0], 0, now
        if left_out:
            msg += " (%d more like this not logged)"
            args += (left_out,)
        logger.log(level, msg, *args, exc_info=exc_info)

    def flush(self, logger: logging.Logger, who: str) -> None:
        """Log the counts of what was left out (e.g. when the connection ends)."""
        for kind, entry in self._kinds.items():
            if entry[0]:
                logger.warning("%s: %d more %s not logged", who, entry[0], kind)
                entry[0] = 0


class ConnectionGuard:
    """The limits of one Engine.IO connection: its event bucket, refusals, log limiter.

    :param limits: the server's :class:`Limits`.
    """

    __slots__ = ("limits", "bucket", "refused", "window_start", "log", "handler_buckets")

    def __init__(self, limits: "Limits") -> None:
        self.limits = limits
        self.bucket = (TokenBucket(limits.rate, limits.burst) if limits.rate > 0 else None)
        self.refused = 0
        self.window_start = 0.0
        #: repeated errors of this connection are logged once, with a count
        self.log = LogLimiter()
        #: (namespace, event) -> TokenBucket, for handlers marked @rate_limit
        self.handler_buckets: dict[tuple[str, str], TokenBucket] | None = None

    def handler_bucket(self, namespace: str, event: str, spec: tuple[float, int]) -> TokenBucket:
        buckets = self.handler_buckets
        if buckets is None:
            buckets = self.handler_buckets = {}
        bucket = buckets.get((namespace, event))
        if bucket is None:
            bucket = buckets[namespace, event] = TokenBucket(*spec)
        return bucket

    def strike(self) -> bool:
        """Count one refused event; True when the connection should now be closed."""
        close_after = self.limits.close_after
        if not close_after:
            return False
        now = _clock()
        if now - self.window_start > ABUSE_WINDOW:
            self.window_start = now
            self.refused = 0
        self.refused += 1
        return self.refused > close_after


class Limits:
    """The per-connection limits of one server, read from its ``[server]`` section."""

    __slots__ = ("max_calls_in_flight", "rate", "burst", "close_after", "max_json_depth")

    def __init__(self, server_config: Mapping[str, Any] | None = None) -> None:
        # keys missing (or no config): the configspec's defaults, the one place they are written
        cfg = section_defaults("server")
        cfg.update(server_config or {})
        self.max_calls_in_flight = int(cfg["max_calls_in_flight"])
        self.rate = float(cfg["rate_limit"])
        self.burst = max(1, int(cfg["rate_limit_burst"]))
        self.close_after = int(cfg["rate_limit_close_after"])
        self.max_json_depth = int(cfg["max_json_depth"])


# -- JSON hygiene --------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (1e999): NaN never gets here
        raise BadJSON(f"{text} is out of range")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """True when *value* nests lists/dicts more than *limit* levels deep (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth > limit:
            return True
        if type(item) is list:
            for child in item:
                if type(child) is list or type(child) is dict:
                    push((child, depth + 1))
        elif type(item) is dict:
            for child in item.values():
                if type(child) is list or type(child) is dict:
                    push((child, depth + 1))
    return False


class StrictJSON:
    """The ``json`` of sbio's socket.io packets: strict in both directions.

    * ``loads`` refuses NaN, Infinity and -Infinity (the json module accepts
      them, JSON.parse does not), numbers out of float range (``1e999``) and
      nesting deeper than *max_depth*, raising :class:`BadJSON`. The checks
      cost nothing on ordinary input: constants and floats go through hooks
      of the C decoder, and the depth is only walked when the text has more
      opening brackets than *max_depth* allows.
    * ``dumps`` is the server's :class:`~sbio.jsonenc.JSONProvider` (*encoder*;
      by default one with only the process-wide conversions): it encodes
      datetimes, UUIDs, Decimals... and refuses NaN and Infinity with
      ValueError, so such a value never becomes a packet that makes
      socket.io-client drop the connection with "parse error".
    """

    def __init__(self, max_depth: int = 64, encoder: JSONProvider | None = None) -> None:
        self.max_depth = max_depth
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant,
                                         parse_float=_parse_float)
        self.encoder = JSONProvider() if encoder is None else encoder
        self.dumps = self.encoder.dumps  # type: ignore[method-assign]  # see dumps

    def loads(self, text: str, **kwargs: Any) -> Any:
        try:
            value = self._decoder.decode(text)
        except RecursionError:
            raise BadJSON(f"nested deeper than {self.max_depth} levels") from None
        limit = self.max_depth
        if len(text) > limit and text.count("[") + text.count("{") > limit \
                and _too_deep(value, limit):
            raise BadJSON(f"nested deeper than {limit} levels")
        return value

    def dumps(self, value: Any, **kwargs: Any) -> str:
        # python-socketio's Packet.encode passes separators=(",", ":"): the
        # provider answers that with its encoder made once. (__init__ binds
        # the provider's dumps over this method: one call less per packet.)
        return self.encoder.dumps(value, **kwargs)
