"""Prometheus metrics of one server (``[metrics] enabled``), served at ``/metrics``.

Almost everything is read at scrape time from what sbio counts anyway: the
connections of each :class:`~sbio.dispatch.NamespaceDispatcher`, the
``metrics`` of each :class:`~sbio.live.Broadcaster` and of the
:class:`~sbio.cluster.RedisBus`, the ``runs`` of each
:class:`~sbio.tasks.DaemonTask`, the outbound queues of the connections. A
custom collector turns them into metric families on each scrape, in this
server's own :class:`prometheus_client.CollectorRegistry` (never the
process-wide default one: two servers of one process do not share or collide).

The only per-event work is :class:`EventStats`: when metrics are enabled,
each dispatcher's ``handle_event`` is wrapped (on the instance) to count the
event by name and outcome and to put its duration in a histogram bucket: a
dict lookup, a few list operations and two clock reads. Disabled, nothing is
wrapped and an event costs nothing more.

``prometheus_client`` is an optional dependency (``pip install 'sbio[metrics]'``),
imported when a server with metrics enabled is built.
"""
from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..protocol import BAD_REQUEST, FORBIDDEN, INTERNAL, NOT_FOUND, RATE_LIMITED, TIMEOUT
from .health import redis_up

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ..dispatch import NamespaceDispatcher

__all__ = ["ServerMetrics", "EventStats", "HANDLER_BUCKETS", "UNKNOWN_EVENT", "OTHER_CODE"]

#: Upper bounds (seconds) of the buckets of ``sbio_handler_seconds``.
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The ``event`` label of events the namespace has no handler for.
UNKNOWN_EVENT = "unknown"
#: The ``code`` (or ``reason``) label past ``metrics.max_codes`` distinct ones.
OTHER_CODE = "other"
#: Distinct disconnect reasons counted per namespace (python-socketio has about six).
MAX_REASONS = 20

_OK = "ok"
#: the codes of the wire protocol: always a label of their own
_PROTOCOL_CODES = frozenset({_OK, FORBIDDEN, NOT_FOUND, BAD_REQUEST, INTERNAL, TIMEOUT,
                             RATE_LIMITED})


class EventStats:
    """What one namespace's events, connects and disconnects did, counted as they happen.

    ``cells`` maps each ``event`` label to one list: ``[ok, errors, bucket...,
    +Inf, sum]``: the count of ``ok`` answers, a dict ``{error code: count}``,
    one count per bucket of :data:`HANDLER_BUCKETS` and one for ``+Inf`` (not
    cumulative), then the sum of the durations in seconds. An event with no
    handler in the namespace is counted as :data:`UNKNOWN_EVENT`; application
    error codes (:class:`sbio.RpcError`) past *max_codes* distinct ones as
    :data:`OTHER_CODE` (the protocol's own codes always have their label):
    the label sets stay bounded whatever clients send.
    """

    __slots__ = ("namespace", "known", "internal", "max_codes", "codes", "cells", "connects",
                 "refused", "reasons")

    #: index of the first bucket count in a cell
    BUCKETS_AT = 2

    def __init__(self, dispatcher: NamespaceDispatcher, max_codes: int = 50) -> None:
        self.namespace = dispatcher.name
        #: the event names that get a label of their own
        self.known = frozenset(name[3:] for name in dispatcher.cls.handler_names())
        self.internal = dispatcher.internal_events   # sbio:subscribe, sbio:unsubscribe
        self.max_codes = max_codes
        self.codes: set[Any] = set()  # application codes given a label
        #: event label -> [ok, {code: count}, bucket counts..., +Inf count, sum of seconds]
        self.cells: dict[str, list[Any]] = {}
        #: connections accepted, and refused (on_connect refused or failed)
        self.connects = 0
        self.refused = 0
        #: disconnect reason -> count
        self.reasons: dict[str, int] = {}

    def label(self, event: Any) -> str:
        """The ``event`` label of *event*."""
        if event in self.known or (type(event) is str and event in self.internal):
            return str(event)
        return UNKNOWN_EVENT

    def cell(self, event: Any) -> list[Any]:
        """The counters of *event*'s label (made on first use; never one per unknown name)."""
        label = self.label(event)
        cell = self.cells.get(label)
        if cell is None:
            cell = self.cells[label] = [0, {}, *([0] * (len(HANDLER_BUCKETS) + 1)), 0.0]
        return cell

    def failed(self, cell: list[Any], code: Any) -> None:
        """Count one error answer *code* in *cell*."""
        errors = cell[1]
        if code not in errors:
            if code not in _PROTOCOL_CODES and code not in self.codes:
                if len(self.codes) >= self.max_codes or type(code) is not str:
                    code = OTHER_CODE
                else:
                    self.codes.add(code)
            if code not in errors:
                errors[code] = 0
        errors[code] += 1

    def record(self, event: Any, envelope: Mapping[str, Any], seconds: float) -> None:
        """Count one handled event: its outcome and its duration (what the wrapper inlines)."""
        cell = self.cells.get(event) or self.cell(event)
        if envelope["ok"]:
            cell[0] += 1
        else:
            self.failed(cell, envelope["error"]["code"])
        cell[bisect.bisect_left(HANDLER_BUCKETS, seconds) + 2] += 1
        cell[-1] += seconds

    def count(self, event: Any, code: Any) -> None:
        """Count one event refused before it ran (``rate_limited``): no duration."""
        self.failed(self.cell(event), code)

    def refused_event(self, namespace: str, event: Any, code: Any) -> None:
        """A ``refusal_hooks`` callable of :class:`sbio.adapter.SocketIOServer`."""
        if namespace == self.namespace:
            self.count(event, code)

    def disconnected(self, reason: Any) -> None:
        reason = reason if type(reason) is str else str(reason)
        reasons = self.reasons
        if reason not in reasons and len(reasons) >= MAX_REASONS:
            reason = OTHER_CODE
        reasons[reason] = reasons.get(reason, 0) + 1

    def counts(self) -> dict[tuple[str, Any], int]:
        """``{(event label, code): count}``, ``ok`` among the codes."""
        found = {}
        for label, cell in list(self.cells.items()):
            if cell[0]:
                found[(label, _OK)] = cell[0]
            for code, n in list(cell[1].items()):
                found[(label, code)] = n
        return found

    def totals(self) -> tuple[int, int]:
        """``(events, errors)`` counted so far (errors: every code but ``ok``)."""
        events = errors = 0
        for cell in list(self.cells.values()):
            bad = sum(cell[1].values())
            events += cell[0] + bad
            errors += bad
        return events, errors


def _instrument(dispatcher: NamespaceDispatcher, stats: EventStats) -> None:
    """Wrap *dispatcher*'s entry points (on the instance) to count into *stats*.

    The event path is the hot one: one dict lookup, one list increment for
    the outcome, one for the duration's bucket (a comparison for the usual
    sub-millisecond answer, a bisection else), one float addition, and two
    clock reads.
    """
    handle_event = dispatcher.handle_event
    connect = dispatcher.connect
    cells = stats.cells
    new_cell = stats.cell
    failed = stats.failed
    clock = time.perf_counter
    bisect_left = bisect.bisect_left
    first_bound = HANDLER_BUCKETS[0]
    first = EventStats.BUCKETS_AT

    def timed_handle_event(sid: str, event: Any, args: Any) -> Any:
        started = clock()
        envelope = handle_event(sid, event, args)
        elapsed = clock() - started
        cell = cells.get(event) or new_cell(event)
        if envelope["ok"]:
            cell[0] += 1
        else:
            failed(cell, envelope["error"]["code"])
        if elapsed <= first_bound:
            cell[first] += 1
        else:
            cell[bisect_left(HANDLER_BUCKETS, elapsed) + first] += 1
        cell[-1] += elapsed
        return envelope

    def counted_connect(sid: str, environ: Any, auth: Any = None) -> Any:
        try:
            accepted = connect(sid, environ, auth)
        except BaseException:
            stats.refused += 1
            raise
        if accepted is False:
            stats.refused += 1
        else:
            stats.connects += 1
        return accepted

    # instance attributes: python-socketio's glue (sbio.adapter) calls these
    dispatcher.handle_event = timed_handle_event  # type: ignore[method-assign]
    dispatcher.connect = counted_connect  # type: ignore[method-assign]
    dispatcher.disconnect_hooks.append(lambda instance, reason: stats.disconnected(reason))
    # events refused before dispatch (rate limits): counted without a duration
    dispatcher.server.sio.refusal_hooks.append(stats.refused_event)


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics.enabled is true but prometheus_client is not installed: "
            "pip install 'sbio[metrics]' (or set metrics.enabled = false)") from None
    return prometheus_client


class ServerMetrics:
    """The metrics of one :class:`sbio.Server`: its registry, its collector, its counters.

    Built by the server when ``metrics.enabled`` is true (see
    :class:`sbio.ops.Operations`); :meth:`add_dispatcher` is called for each
    namespace, :meth:`exposition` answers a scrape.

    :param server: the server.
    :param settings: the ``[metrics]`` section.
    """

    def __init__(self, server: Any, settings: Mapping[str, Any]) -> None:
        prometheus = _import_prometheus()
        from prometheus_client import (
            CollectorRegistry,
            GCCollector,
            PlatformCollector,
            ProcessCollector,
        )

        self.server = server
        self.max_codes = int(settings["max_codes"])
        #: namespace -> EventStats
        self.stats: dict[str, EventStats] = {}
        self._prometheus = prometheus
        #: this server's registry (never prometheus_client's global REGISTRY)
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SbioCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def add_dispatcher(self, dispatcher: NamespaceDispatcher) -> EventStats:
        """Count the events, connects and disconnects of *dispatcher*'s namespace."""
        stats = self.stats.get(dispatcher.name)
        if stats is None:
            stats = self.stats[dispatcher.name] = EventStats(dispatcher, self.max_codes)
            _instrument(dispatcher, stats)
        return stats

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """``(body, content type)`` of a scrape: Prometheus text (OpenMetrics if *accept* asks)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # -- collection, at scrape time ------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        """Every sbio metric family, read now from the server's counters."""
        yield from self._connection_families()
        yield from self._event_families()
        yield from self._live_families()
        yield from self._outbound_families()
        yield from self._cluster_families()
        yield from self._task_families()

    def _dispatchers(self) -> list[NamespaceDispatcher]:
        return list(self.server.sio.dispatchers.values())

    def _connection_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        import sbio

        info = GaugeMetricFamily("sbio_info", "sbio's version (always 1)", labels=["version"])
        info.add_metric([sbio.__version__], 1)
        yield info
        connections = GaugeMetricFamily("sbio_connections", "connections to the namespace now",
                                        labels=["namespace"])
        connects = CounterMetricFamily("sbio_connects_total",
                                       "connections accepted by the namespace",
                                       labels=["namespace"])
        refused = CounterMetricFamily("sbio_connects_refused_total",
                                      "connections refused by on_connect (or failing in it)",
                                      labels=["namespace"])
        disconnects = CounterMetricFamily("sbio_disconnects_total",
                                          "connections of the namespace that ended, by reason",
                                          labels=["namespace", "reason"])
        for dispatcher in self._dispatchers():
            name = dispatcher.name
            connections.add_metric([name], sum(
                1 for instance in list(dispatcher.instances.values()) if instance.connected))
            stats = self.stats.get(name)
            if stats is None:
                continue
            connects.add_metric([name], stats.connects)
            refused.add_metric([name], stats.refused)
            for reason, count in sorted(stats.reasons.items()):
                disconnects.add_metric([name, reason], count)
        yield from (connections, connects, refused, disconnects)

    def _event_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        events = CounterMetricFamily(
            "sbio_events_total", "events received, by handler and outcome (code: ok or the "
            "error code; event: unknown when the namespace has no such handler)",
            labels=["namespace", "event", "code"])
        seconds = HistogramMetricFamily(
            "sbio_handler_seconds", "seconds from receiving an event to its answer "
            "(ACL, argument checks and the handler)", labels=["namespace", "event"])
        bounds = [repr(b) for b in HANDLER_BUCKETS] + ["+Inf"]
        first = EventStats.BUCKETS_AT
        for name, stats in list(self.stats.items()):
            for (event, code), count in sorted(stats.counts().items(), key=_by_str):
                events.add_metric([name, event, str(code)], count)
            for event, cell in sorted(stats.cells.items()):
                cumulative, buckets = 0.0, []
                for bound, in_bucket in zip(bounds, cell[first:-1], strict=True):
                    cumulative += in_bucket
                    buckets.append((bound, cumulative))
                if cumulative:  # refused only (rate_limited): nothing ran
                    seconds.add_metric([name, event], buckets, cell[-1])
        yield events
        yield seconds

    def _live_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        subscriptions = GaugeMetricFamily("sbio_subscriptions", "live subscriptions now",
                                          labels=["namespace"])
        depth = GaugeMetricFamily("sbio_broadcaster_queue_depth",
                                  "notified channels and requested re-runs waiting now",
                                  labels=["namespace"])
        counters = {key: CounterMetricFamily(f"sbio_broadcaster_{key}_total", doc,
                                             labels=["namespace"])
                    for key, doc in _BROADCASTER_COUNTERS.items()}
        for name, broadcaster in list(self.server.live.broadcasters.items()):
            subscriptions.add_metric([name], broadcaster.subscription_count())
            metrics = broadcaster.metrics
            depth.add_metric([name], metrics.get("queue_depth", 0))
            for key, family in counters.items():
                family.add_metric([name], metrics.get(key, 0))
        yield subscriptions
        yield depth
        yield from counters.values()

    def _outbound_families(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from ..adapter import outbound_backlogs

        backlogs = outbound_backlogs(self.server.sio)
        yield GaugeMetricFamily(
            "sbio_outbound_queue_bytes", "bytes queued for the one connection with the largest "
            "outbound backlog now (server.max_outbound_bytes drops it)",
            value=max((size for _, size in backlogs), default=0))
        yield GaugeMetricFamily(
            "sbio_outbound_queue_messages", "messages queued for the one connection with the "
            "longest outbound queue now (server.max_outbound_messages drops it)",
            value=max((count for count, _ in backlogs), default=0))
        yield GaugeMetricFamily("sbio_outbound_backlogged_connections",
                                "connections with messages not yet written to their socket",
                                value=len(backlogs))

    def _cluster_families(self) -> Iterator[Metric]:
        cluster = getattr(self.server, "cluster", None)
        if cluster is None:
            return
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("sbio_redis_up", "1 while the server is subscribed to Redis "
                                "(server.message_queue), else 0",
                                value=1 if redis_up(cluster) else 0)
        yield CounterMetricFamily("sbio_redis_outages_total", "times Redis became unreachable",
                                  value=cluster.health.outages)
        metrics = cluster.bus.metrics
        for key, doc in _BUS_COUNTERS.items():
            yield CounterMetricFamily(f"sbio_bus_{key}_total", doc, value=metrics.get(key, 0))

    def _task_families(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        runs = CounterMetricFamily("sbio_daemon_task_runs_total",
                                   "calls of each DaemonTask's function, by outcome (ok, error)",
                                   labels=["task", "outcome"])
        for service in self.server.lifecycle.services:
            counts = getattr(service, "runs", None)
            if isinstance(counts, dict):
                for outcome, count in sorted(counts.items()):
                    runs.add_metric([str(service.name), outcome], count)
        yield runs


def _by_str(item: tuple[tuple[str, Any], int]) -> tuple[str, str]:
    (event, code), _ = item
    return event, str(code)


_BROADCASTER_COUNTERS = {
    "notifications": "notifications that matched at least one subscription",
    "cycles": "times the broadcaster drained its queue",
    "reruns": "re-runs of subscribed handlers (a shared group counts once)",
    "coalesced": "notified re-runs folded into one already running",
    "pushes": "sbio:update packets sent (data or error)",
    "skipped_unchanged": "re-runs whose result the client already had (nothing sent)",
    "errors": "re-runs that ended in an error (timeouts excluded)",
    "timeouts": "re-runs stopped by broadcaster.timeout",
    "dropped": "subscriptions the server dropped (ACL revoked)",
}

_BUS_COUNTERS = {
    "published": "notifications sent to the other processes through Redis",
    "received": "notifications received from the other processes",
    "held": "notifications held while Redis was unreachable",
    "republished": "held channels published once Redis was back",
    "resyncs": "times this process re-ran all its subscriptions (missed notifications)",
    "malformed": "bus messages that could not be decoded (ignored)",
}


class _SbioCollector:
    """The prometheus_client collector of one server: :meth:`ServerMetrics.families`."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.collect: Callable[[], Iterator[Metric]] = metrics.families
