"""LiveData, one per server: its broadcasters, its bus, its place among the running servers."""
import itertools
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from ..config import section_defaults
from ..dispatch import NamespaceDispatcher
from ..protocol import SUBSCRIBE_EVENT, UNSUBSCRIBE_EVENT
from .broadcaster import Broadcaster
from .bus import Bus, LocalBus
from .notify import _set_running

if TYPE_CHECKING:
    from .watch import Watch

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

# -- LiveData: one per server ---------------------------------------------------------------


class _BusListener:
    """The bus callback of a LiveData, holding it weakly (a forgotten server is collected)."""

    __slots__ = ("ref", "bus", "__weakref__")

    def __init__(self, live: "LiveData") -> None:
        self.ref = weakref.ref(live)
        self.bus: Bus | None = None

    def __call__(self, channels: tuple[str, ...], trigger: str) -> None:
        live = self.ref()
        if live is None:
            if self.bus is not None:
                self.bus.unsubscribe(self)
            return
        live._on_notify(channels, trigger)


class LiveData:
    """Live data of one :class:`sbio.Server`: one :class:`Broadcaster` per namespace.

    :param server: the server.
    :param config: the ``[broadcaster]`` configuration: ``pool_size`` (re-runs
        in parallel per namespace), ``timeout`` (seconds one re-run may take),
        ``max_subscriptions`` and ``max_subscription_bytes`` (per connection
        and namespace), ``max_delta_bytes`` (delta pushes), ``max_watches``
        and ``watch_queue`` (server-side watches), ``metrics_log_interval``
        (seconds between the INFO lines of the broadcasters' counters, 0: none);
        a key it lacks (or no
        *config*) takes the configspec's default.
    :param bus: the :class:`Bus` this server's notifications go through (a new
        :class:`LocalBus` by default; the server passes its cluster's Redis bus).

    Making one joins nothing: :meth:`open` (called by ``Server.start()``, or
    by the first subscription of a server that was never started) joins the
    bus and adds the server to :func:`running_servers`; :meth:`stop` undoes it.
    """

    #: The broadcaster class, one per namespace.
    broadcaster_class = Broadcaster

    def __init__(self, server: Any, config: Mapping[str, Any] | None = None,
                 bus: Bus | None = None) -> None:
        settings = section_defaults("broadcaster")
        settings.update({k: v for k, v in (config or {}).items() if k in settings})
        #: the :class:`sbio.Server` (``Any``: sbio.server imports this module)
        self.server = server
        self.pool_size = int(settings["pool_size"])
        self.timeout = float(settings["timeout"])
        #: Subscriptions one connection may hold in one namespace (``max_subscriptions``).
        self.max_subscriptions = int(settings["max_subscriptions"])
        #: Bytes of JSON arguments the subscriptions of one connection may hold in one
        #: namespace (``max_subscription_bytes``).
        self.max_subscription_bytes = int(settings["max_subscription_bytes"])
        #: Largest result (bytes of JSON) a delta subscription keeps to patch against
        #: (``max_delta_bytes``; 0: no delta pushes).
        self.max_delta_bytes = int(settings["max_delta_bytes"])
        #: Server-side watches per namespace (``max_watches``).
        self.max_watches = int(settings["max_watches"])
        #: Updates waiting for one watch's callback (``watch_queue``).
        self.watch_queue = int(settings["watch_queue"])
        #: Seconds between two INFO lines of each busy broadcaster's counters
        #: (``metrics_log_interval``); 0: never.
        self.metrics_log_interval = float(settings["metrics_log_interval"])
        #: namespace name -> Broadcaster
        self.broadcasters: dict[str, Broadcaster] = {}
        #: watch id -> the server-side watches running (:meth:`watch`)
        self._watches: dict[str, Watch] = {}
        self._watch_ids = itertools.count(1)
        self._listener = _BusListener(self)
        self.bus = _check_bus(LocalBus() if bus is None else bus)
        self._joined = False
        self._finalizer: weakref.finalize | None = None
        #: the greenlet logging the counters every metrics_log_interval (see log_metrics)
        self._reporter: gevent.Greenlet | None = None
        self._reporter_stop: gevent.event.Event | None = None
        # namespace -> the counters at the last report
        self._reported: dict[str, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"<LiveData namespaces={sorted(self.broadcasters)}>"

    def add_dispatcher(self, dispatcher: NamespaceDispatcher) -> Broadcaster:
        """Serve ``sbio:subscribe`` / ``sbio:unsubscribe`` on *dispatcher*'s namespace."""
        if dispatcher.name in self.broadcasters:
            return self.broadcasters[dispatcher.name]
        broadcaster = self.broadcaster_class(self, dispatcher)
        self.broadcasters[dispatcher.name] = broadcaster
        dispatcher.internal_events[SUBSCRIBE_EVENT] = broadcaster.handle_subscribe
        dispatcher.internal_events[UNSUBSCRIBE_EVENT] = broadcaster.handle_unsubscribe
        dispatcher.disconnect_hooks.append(
            lambda instance, reason: broadcaster.drop_connection(instance.sid))
        return broadcaster

    def broadcaster(self, namespace: str) -> Broadcaster:
        """The :class:`Broadcaster` of *namespace* (e.g. for its ``metrics``)."""
        return self.broadcasters[namespace]

    def unsubscribe_all(self, namespace: str, sid: str) -> int:
        """End every subscription of connection *sid* in *namespace*; returns how many.

        What :meth:`sbio.Namespace.unsubscribe_all` calls. A namespace this
        server does not host has none.
        """
        broadcaster = self.broadcasters.get(namespace)
        return 0 if broadcaster is None else broadcaster.drop_connection(sid)

    @property
    def metrics(self) -> dict[str, dict[str, int]]:
        """The metrics of every broadcaster, by namespace."""
        return {name: dict(b.metrics) for name, b in self.broadcasters.items()}

    def watch(self, namespace: str, event: str, args: Sequence[Any] = (),
              callback: Callable[[Any, str], Any] | None = None, *,
              as_session: dict[str, Any] | None = None, acl: Iterable[str] | str = "initial",
              on_error: Callable[[dict[str, Any]], Any] | None = None) -> "Watch":
        """Watch a subscribable handler from server code: no socket, same rules.

        ::

            def changed(cards, trigger):
                log.info("%d cards on main (%s)", len(cards), trigger)

            watch = server.live.watch("/board", "cards", ["main"], changed,
                                      as_session={"user": "bot"}, acl="all")
            ...
            watch.stop()

        The handler ``on_<event>(*args)`` runs as a new instance of the
        namespace's class (never connected: ``on_connect`` does not run, its
        ``sid`` is the watch's id, ``emit()`` reaches nobody) whose
        ``session`` is *as_session*, through the same dispatch as a
        connection's subscription: the same ACL check, channels, coalescing,
        timeout and change detection. The first run happens in ``watch()``.

        :param callback: ``callback(value, trigger)``, for the first result
            (trigger ``"subscribe"``) and each changed one, in order, in the
            watch's own greenlet. *value* is the result as a socket client
            decodes it (JSON: tuples become lists, keys strings). A callback
            that raises is logged; the watch goes on. If it falls behind by
            more than ``broadcaster.watch_queue`` updates, the oldest are
            dropped (``watch.dropped``).
        :param as_session: the instance's ``session`` dict (default ``{}``).
        :param acl: ``"initial"``: the class's :meth:`~sbio.Namespace.get_initial_acl`,
            as a new connection has; ``"all"``: every handler; or an iterable
            of handler names (``["on_cards"]``).
        :param on_error: ``on_error(error)`` with the ``{"code", "message"}``
            of a failed re-run (logged when None). A ``forbidden`` one ends
            the watch.
        :returns: a :class:`~sbio.live.watch.Watch`; ``.value`` holds the
            first result already.
        :raises sbio.RpcError: the first run failed (its code: ``forbidden``,
            ``not_found``, ``bad_request``, ``internal``, an application
            code); nothing is left running.
        :raises KeyError: the server has no namespace *namespace*.
        :raises RuntimeError: more than ``broadcaster.max_watches`` watches
            on that namespace.

        Call it from the server's thread (a handler, a task, a greenlet).
        ``server.stop()`` stops every watch.
        """
        from .watch import start_watch

        return start_watch(self, namespace, event, args, callback, as_session=as_session,
                           acl=acl, on_error=on_error)

    @property
    def watches(self) -> "list[Watch]":
        """The server-side watches running, in the order they started."""
        return list(self._watches.values())

    #: the counters of :meth:`log_metrics`: (metrics key, name in the line)
    _LOGGED = (("notifications", "notifications"), ("reruns", "runs"),
               ("coalesced", "coalesced"), ("pushes", "pushes"))

    def log_metrics(self) -> dict[str, dict[str, int]]:
        """Log at INFO, one line per namespace, the broadcasters' counters since the last call.

        Runs, coalesced runs, pushes (and notifications) since the previous
        line, and the queue depth now; a namespace with none of them is not
        logged. Called every ``metrics_log_interval`` seconds while the live
        data is open; returns the lines' counters by namespace.
        """
        out: dict[str, dict[str, int]] = {}
        for name, broadcaster in self.broadcasters.items():
            now = broadcaster.metrics
            last = self._reported.get(name, {})
            delta = {key: now.get(key, 0) - last.get(key, 0) for key, _ in self._LOGGED}
            self._reported[name] = {key: now.get(key, 0) for key, _ in self._LOGGED}
            depth = now.get("queue_depth", 0)
            if not any(delta.values()) and not depth:
                continue
            out[name] = dict(delta, queue_depth=depth)
            log.info("broadcaster %s: %s in the last %g s; queue depth %d", name,
                     ", ".join(f"{delta[key]} {label}" for key, label in self._LOGGED),
                     self.metrics_log_interval, depth)
        return out

    def _start_reporter(self) -> None:
        if self.metrics_log_interval <= 0 or self._reporter is not None:
            return
        self._reported = {name: dict(b.metrics) for name, b in self.broadcasters.items()}
        stop = self._reporter_stop = gevent.event.Event()
        # holds the LiveData weakly: a server dropped without stop() is still collected
        self._reporter = gevent.spawn(_report_metrics, weakref.ref(self), stop,
                                      self.metrics_log_interval)
        self._reporter.name = "sbio-live-metrics"

    def _stop_reporter(self, timeout: float | None) -> None:
        greenlet, self._reporter = self._reporter, None
        stop, self._reporter_stop = self._reporter_stop, None
        if greenlet is None or stop is None:
            return
        stop.set()
        greenlet.join(timeout)
        if not greenlet.dead:
            log.warning("the live-data metrics logger did not stop within %ss: killed", timeout)
            greenlet.kill(block=True, timeout=1)

    def resync(self, trigger: str = "resync") -> None:
        """Re-run every subscription of every namespace once; push only what changed.

        For when notifications may have been missed, e.g. after the Redis
        bus of a cluster reconnects (see :mod:`sbio.cluster`).
        """
        for broadcaster in self.broadcasters.values():
            channels = tuple(broadcaster.index)
            if channels:
                broadcaster.notify(channels, trigger)

    def _on_notify(self, channels: tuple[str, ...], trigger: str) -> None:
        for broadcaster in self.broadcasters.values():
            broadcaster.notify(channels, trigger)

    def _join(self, bus: Bus) -> None:
        self._listener.bus = bus
        bus.subscribe(self._listener)
        # a server dropped without stop() leaves the bus when it is collected
        self._finalizer = weakref.finalize(self, bus.unsubscribe, self._listener)

    def _leave(self) -> None:
        if self._finalizer is not None:  # set by _join, which came first
            self._finalizer.detach()
        self.bus.unsubscribe(self._listener)
        self._listener.bus = None

    def set_bus(self, bus: Bus) -> Bus:
        """Use *bus* from now on and return the previous one (e.g. a spy in a test).

        Open live data leaves the old bus and joins *bus*. Call it from the
        thread running the server.
        """
        _check_bus(bus)
        old = self.bus
        if bus is not old:
            if self._joined:
                self._leave()
                self.bus = bus
                self._join(bus)
            else:
                self.bus = bus
        return old

    def open(self) -> None:
        """Join the bus and count the server among :func:`running_servers`. Idempotent."""
        if not self._joined:
            self._joined = True
            self._join(self.bus)
            _set_running(self.server, True)
            self._start_reporter()

    def stop(self, timeout: float | None = None) -> None:
        """Stop every watch, leave the bus and stop every broadcaster (joined, then killed).
        Idempotent.

        Subscriptions stay registered; a later ``sbio:subscribe`` opens the
        live data again and starts the broadcaster (an in-process test
        server may be used again after ``stop()``).
        """
        if self._joined:
            self._joined = False
            self._leave()
            _set_running(self.server, False)
        deadline = None if timeout is None else time.monotonic() + timeout
        watches = list(self._watches.values())
        for watch in watches:
            watch.stop()
        for watch in watches:
            watch.join(None if deadline is None else max(0, deadline - time.monotonic()))
        self._stop_reporter(1.0 if timeout is None else max(0.1, min(1.0, timeout)))
        for broadcaster in list(self.broadcasters.values()):
            left = None if deadline is None else max(0, deadline - time.monotonic())
            try:
                broadcaster.stop(left)
            except Exception:
                log.exception("stopping the broadcaster of %s failed", broadcaster.namespace)


def _report_metrics(ref: "weakref.ref[LiveData]", stop: gevent.event.Event,
                    interval: float) -> None:
    """The loop of LiveData's metrics logger: one report every *interval* s until *stop*."""
    while not stop.wait(interval):
        live = ref()
        if live is None:
            return
        if log.isEnabledFor(logging.INFO):
            try:
                live.log_metrics()
            except Exception:
                log.exception("logging the live-data metrics failed")
        del live


def _check_bus(bus: object) -> Bus:
    if not isinstance(bus, Bus):
        raise TypeError(f"a live-data bus must be a sbio.live.Bus, got {bus!r}")
    return bus


def live_data_on(bus: Bus) -> list[LiveData]:
    """The :class:`LiveData` instances (one per server) listening on *bus* now."""
    found: list[LiveData] = []
    for callback, _ in bus._subscribers:
        live = callback.ref() if isinstance(callback, _BusListener) else None
        if live is not None:
            found.append(live)
    return found
