"""Live data: ``@subscribes`` / ``@notifies`` / ``notify()`` and the greenlet broadcaster.

A handler marked :func:`subscribes` can be subscribed to with the
``sbio:subscribe`` event. Its first result is the ack; every time one of its
channels is notified (:func:`notify`, :func:`notifies`, the SQLAlchemy helpers
after a commit, another process through the bus) the handler is re-run as the
subscribing connection and the client gets an ``sbio:update`` push when the
result changed. See ``docs/live-data.md`` for the tutorial and the protocol.

How a notification travels::

    notify("cards")            any greenlet or OS thread
      -> its server(s)         the current call's, the current task's lifecycle's,
                               or (outside both) every running server
      -> Bus.publish()         each server's own bus: a LocalBus, or its cluster's
                               Redis bus, which carries it to every process
      -> LiveData._on_notify   in the hub thread of the server
      -> Broadcaster.notify    per namespace: channel index lookup, O(matching)
      -> Broadcaster._loop     one greenlet per namespace: coalesce, then re-run
                               each matched subscription once, in a bounded pool
                               with a per-run timeout; push only what changed.

The bookkeeping (registries, channel matching, coalescing) is plain Python;
the only IO is sending the pushes through python-socketio.

Re-runs never notify. A re-run of a subscribed handler is a read: every
notification it raises (``notify()``, ``notify(delay=True)``, ``@notifies``)
is dropped with a debug log, so a handler that both subscribes to and
notifies a channel cannot loop.
"""
import collections
import functools
import hashlib
import inspect
import json
import logging
import re
import string
import time
import weakref

import gevent
import gevent.event
import gevent.pool
from gevent import monkey

from .adapter import send_text, text_sender
from .channels import channel_name  # noqa: F401  (public here too)
from .channels import channel_names as _channel_names
from .context import current_call
from .protocol import (SUBSCRIBE_EVENT, UNSUBSCRIBE_EVENT, UPDATE_EVENT, UpdateEncoder,  # noqa: F401
                       error_envelope, error_envelope_of, is_valid_event_name, ok_envelope)
from .protocol import short_repr as _short
from .tasks import current_lifecycle

__all__ = ["subscribes", "notifies", "notify", "channel_name", "LiveData", "Broadcaster",
           "Subscription", "Bus", "LocalBus", "running_servers", "live_data_on"]

log = logging.getLogger(__name__)

# SUBSCRIBE_EVENT, UNSUBSCRIBE_EVENT, UPDATE_EVENT: see sbio.protocol (imported above).

#: Trigger of notifications sent outside any handler without a trigger.
MANUAL_TRIGGER = "manual"

_MAX_ID_LENGTH = 128
# Results longer than this are remembered by a digest instead of their text.
_FINGERPRINT_TEXT_MAX = 512

# The real OS thread id, whether or not (or whenever) threading is monkey-patched.
_real_get_ident = monkey.get_original("_thread", "get_ident")


# -- channels (naming: sbio.channels) ----------------------------------------------------

_FORMATTER = string.Formatter()
_FIELD_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Channels:
    """The channels of one decorated function: plain names and ``{arg}`` templates.

    Templates are formatted with the function's bound arguments (defaults
    applied); the signature is computed once, when decorating.
    """

    __slots__ = ("names", "has_templates", "signature")

    def __init__(self, func, channels, decorator):
        self.names = _channel_names(channels)
        self.signature = inspect.signature(func)
        params = self.signature.parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.has_templates = False
        for name in self.names:
            for _, field, _, _ in _FORMATTER.parse(name):
                if field is None:
                    continue
                self.has_templates = True
                root = _FIELD_ROOT.match(field)
                if root is None:
                    raise ValueError(
                        f"@{decorator}({name!r}) on {func.__qualname__}: channel templates "
                        "name the handler's arguments, e.g. 'room:{room}'")
                if root.group() not in params and not takes_kwargs:
                    raise ValueError(
                        f"@{decorator}({name!r}) on {func.__qualname__}: "
                        f"{func.__qualname__} has no argument {root.group()!r} "
                        f"(arguments: {', '.join(params)})")

    def format(self, args, kwargs=None):
        """The concrete channel names for one call ``func(*args, **kwargs)``."""
        if not self.has_templates:
            return self.names
        bound = self.signature.bind(*args, **(kwargs or {}))
        bound.apply_defaults()
        values = bound.arguments
        return tuple(dict.fromkeys(name.format_map(values) for name in self.names))


# -- decorators and notify() ------------------------------------------------------------


def subscribes(*channels, shared=False):
    """Mark an ``on_*`` handler as subscribable, re-run when *channels* are notified.

    :param channels: channel names, model classes (their table name), or
        templates formatted with the handler's arguments (``"room:{room}"``,
        so only the subscriptions of that room re-run).
    :param shared: the result depends only on the arguments, not on the
        connection: each distinct argument list is computed once per
        broadcast cycle and the encoded result is sent to every subscriber
        (each subscriber's ACL is still checked).
    """
    if len(channels) == 1 and inspect.isfunction(channels[0]):
        raise TypeError("use @subscribes(...) with parentheses and the channel names, "
                        "e.g. @subscribes('cards')")

    def decorate(func):
        func._sbio_subscribes = _SubscribeSpec(_Channels(func, channels, "subscribes"),
                                               bool(shared))
        return func

    return decorate


class _SubscribeSpec:
    __slots__ = ("channels", "shared")

    def __init__(self, channels, shared):
        self.channels = channels
        self.shared = shared


def _trigger_of(func):
    name = func.__name__
    return name[3:] if name.startswith("on_") else name


def notifies(*channels):
    """Notify *channels* after the decorated function returns normally.

    Inside a handler the notification is sent once the handler has returned
    normally (it is dropped when the handler raises); outside a handler it
    is sent when the function returns. Templates (``"room:{room}"``) are
    formatted with the function's arguments. The trigger is the event name
    (``on_add_card`` -> ``"add_card"``).
    """
    if len(channels) == 1 and inspect.isfunction(channels[0]):
        raise TypeError("use @notifies(...) with parentheses and the channel names, "
                        "e.g. @notifies('cards')")

    def decorate(func):
        spec = _Channels(func, channels, "notifies")
        trigger = _trigger_of(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            names = spec.format(args, kwargs)
            if names:
                _notify_names(names, True, trigger)
            return result

        return wrapper

    return decorate


def notify(channels, delay=False, trigger=None):
    """Tell every subscription of *channels* to re-run (in every namespace and process).

    Which servers of this process it reaches (each publishes on its own bus,
    so with a cluster the other processes of that cluster get it too):

    * in a handler, or a re-run: the server of the current call;
    * in a :class:`~sbio.DaemonTask`, a Caller or a startup/shutdown hook:
      the running server(s) whose lifecycle runs it;
    * anywhere else (a plain greenlet, an OS thread, a script), or from a
      lifecycle no running server uses: every running server of the process.

    Safe from any greenlet and from any OS thread.

    :param channels: a channel name or model class, or an iterable of them.
    :param delay: inside a handler, wait until the handler has returned
        normally (dropped if it raises); outside a handler it changes nothing.
    :param trigger: a string pushed with the updates (``"trigger"``); by
        default the current handler's event name, or ``"manual"``.
    """
    names = _channel_names(channels)
    if names:
        _notify_names(names, delay, None if trigger is None else str(trigger))


def _notify_names(names, delay, trigger):
    ctx = current_call()
    if ctx is not None:
        if ctx.purpose == "rerun":
            log.debug("notification of %s raised while re-running %r dropped "
                      "(re-runs never notify)", names, ctx.event)
            return
        if trigger is None:
            trigger = ctx.event
        servers = (ctx.namespace.server,)
        if delay:
            ctx.after_success.append(functools.partial(_publish, servers, names, trigger))
            return
    else:
        servers = _context_servers()
    _publish(servers, names, MANUAL_TRIGGER if trigger is None else trigger)


def _context_servers():
    """The servers a notification made outside any handler call reaches."""
    servers = running_servers()
    lifecycle = current_lifecycle()
    if lifecycle is not None:
        own = [server for server in servers if server.lifecycle is lifecycle]
        if own:
            return own
    return servers


def _publish(servers, names, trigger):
    # Buses with the same reach key (one Redis channel) reach each other's
    # subscribers: publish once per key, or a server would get it twice.
    reached = set()
    for server in servers:
        bus = server.live.bus
        key = bus.reach_key
        if key not in reached:
            reached.add(key)
            bus.publish(names, trigger)


# -- the running servers ----------------------------------------------------------------

# Weak references to the servers whose live data is open (started, or an
# in-process test server with subscriptions): the servers a notification made
# outside any handler or task reaches. A tuple replaced under the lock, never
# mutated, so notify() reads it from any thread without locking.
_running = ()
_running_lock = monkey.get_original("_thread", "allocate_lock")()


def running_servers():
    """The servers of this process that :func:`notify` reaches from outside any context.

    A server is in it from :meth:`sbio.Server.start` to :meth:`~sbio.Server.stop`
    (an in-process test server from its first subscription to its ``stop()``).
    Held weakly: a server dropped without ``stop()`` leaves it when collected.
    """
    return [server for server in (ref() for ref in _running) if server is not None]


def _set_running(server, running):
    global _running
    with _running_lock:
        refs = [ref for ref in _running if ref() is not None and ref() is not server]
        if running:
            refs.append(weakref.ref(server))
        _running = tuple(refs)


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


def live_data_on(bus):
    """The :class:`LiveData` instances (one per server) listening on *bus* now."""
    found = []
    for callback, _ in bus._subscribers:
        live = callback.ref() if isinstance(callback, _BusListener) else None
        if live is not None:
            found.append(live)
    return found


# -- subscriptions ------------------------------------------------------------------------

_NOT_DIRTY = object()


class _Target:
    """What the broadcaster runs: one subscription, or one shared group."""

    __slots__ = ("channels", "alive", "running", "dirty", "__weakref__")

    def __init__(self, channels):
        self.channels = channels
        self.alive = True
        self.running = False
        self.dirty = _NOT_DIRTY  # the trigger of a notification that came while running


class Subscription(_Target):
    """One live subscription of one connection (``self.subscription`` in the handler).

    ``id``, ``event``, ``args``, ``channels`` (concrete names), ``shared``
    and ``sid`` describe it; ``data`` is a dict private to this subscription,
    kept across its re-runs and discarded when it ends (a re-subscribe with
    the same id starts a fresh one).
    """

    __slots__ = ("id", "event", "args", "shared", "data", "instance", "sid", "eio_sid",
                 "id_json", "last", "ready", "group", "size")

    def __init__(self, instance, eio_sid, sub_id, event, args, channels, shared):
        super().__init__(channels)
        self.instance = instance
        self.sid = instance.sid
        self.eio_sid = eio_sid
        self.id = sub_id
        self.id_json = UpdateEncoder.id_json(sub_id)
        self.event = event
        self.args = args
        self.shared = shared
        self.data = {}
        self.last = None     # fingerprint of the last result (or error) the client has
        self.ready = False   # the first result has been sent
        self.group = None
        self.size = 0        # bytes of the JSON of args (server.max_subscription_bytes)

    def __repr__(self):
        return (f"<Subscription {self.id!r} {self.event}{tuple(self.args)!r} "
                f"sid={self.sid} channels={list(self.channels)}>")


class _SharedGroup(_Target):
    """The subscriptions of a ``shared=True`` handler with the same arguments."""

    __slots__ = ("key", "event", "args", "members")

    def __init__(self, key, event, args, channels):
        super().__init__(channels)
        self.key = key
        self.event = event
        self.args = args
        self.members = {}  # Subscription -> None (ordered set)

    def __repr__(self):
        return f"<SharedGroup {self.event}{tuple(self.args)!r} members={len(self.members)}>"


def _encode(data):
    """The canonical JSON text of *data* (sorted keys, compact); sent as is."""
    # allow_nan=False: NaN/Infinity would make socket.io-client drop the connection
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except TypeError:
        # keys of mixed types cannot be sorted: compare in insertion order instead
        return json.dumps(data, separators=(",", ":"), allow_nan=False)


def _fingerprint(text):
    if len(text) <= _FINGERPRINT_TEXT_MAX:
        return text
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_UNJSONABLE = {"code": "internal",
               "message": "the handler returned a value that cannot be sent as JSON"}


# -- the broadcaster ----------------------------------------------------------------------


class Broadcaster:
    """The subscriptions of one namespace and the greenlet that re-runs them.

    Owned by :class:`LiveData`; its greenlet starts on first use and blocks
    on its queue between notifications. ``metrics`` counts, since creation:

    ``notifications``  notifications that matched at least one subscription
    ``cycles``         times the queue was drained
    ``reruns``         handler runs (a shared group counts once)
    ``pushes``         ``sbio:update`` packets sent (data or error)
    ``skipped_unchanged`` runs whose result the client already had
    ``errors``         runs that ended in an error (timeouts excluded)
    ``timeouts``       runs stopped by the per-run timeout
    ``dropped``        subscriptions dropped by the server (ACL revoked)
    ``queue_depth``    notified channels and requested runs waiting now
    """

    def __init__(self, live, dispatcher):
        self.live = live
        self.dispatcher = dispatcher
        self.namespace = dispatcher.name
        self.sio = dispatcher.server.sio
        #: sid -> {subscription id -> Subscription}
        self.by_sid = {}
        #: channel -> set of targets (Subscription, or _SharedGroup for shared ones)
        self.index = {}
        #: (event, canonical args) -> _SharedGroup
        self.groups = {}
        self.metrics = dict.fromkeys(
            ("notifications", "cycles", "reruns", "pushes", "skipped_unchanged", "errors",
             "timeouts", "dropped", "queue_depth"), 0)
        self._pending = {}   # channel -> trigger, coalesced until the next cycle
        self._requests = {}  # target -> trigger: runs asked for outside notifications
        self._wake = gevent.event.Event()
        self._greenlet = None
        self._stopping = False
        self.pool = gevent.pool.Pool(live.pool_size)
        self._push = UpdateEncoder(self.namespace)

    def __repr__(self):
        return f"<Broadcaster {self.namespace} subscriptions={self.subscription_count()}>"

    # -- registry --------------------------------------------------------------------

    def subscription_count(self):
        return sum(len(subs) for subs in self.by_sid.values())

    def registry_sizes(self):
        """Sizes of every registry (for leak checks and debugging)."""
        return {"connections": len(self.by_sid), "subscriptions": self.subscription_count(),
                "channels": len(self.index), "groups": len(self.groups),
                "pending": len(self._pending), "requests": len(self._requests),
                "running": len(self.pool)}

    def subscriptions_of(self, sid):
        """The live subscriptions of connection *sid*, by id."""
        return dict(self.by_sid.get(sid, {}))

    def _add(self, sub):
        subs = self.by_sid.get(sub.sid)
        if subs is None:
            subs = self.by_sid[sub.sid] = {}
        old = subs.get(sub.id)
        if old is not None:
            self._remove(old)
            subs = self.by_sid.setdefault(sub.sid, {})
        subs[sub.id] = sub
        if sub.shared:
            key = (sub.event, _encode(sub.args))
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _SharedGroup(key, sub.event, sub.args, sub.channels)
                self._index(group)
            group.members[sub] = None
            sub.group = group
        else:
            self._index(sub)

    def _remove(self, sub):
        if not sub.alive:
            return
        sub.alive = False
        subs = self.by_sid.get(sub.sid)
        if subs is not None and subs.get(sub.id) is sub:
            del subs[sub.id]
            if not subs:
                del self.by_sid[sub.sid]
        group = sub.group
        if group is None:
            self._unindex(sub)
            self._requests.pop(sub, None)
        else:
            group.members.pop(sub, None)
            if not group.members:
                group.alive = False
                if self.groups.get(group.key) is group:
                    del self.groups[group.key]
                self._unindex(group)
                self._requests.pop(group, None)

    def _index(self, target):
        for channel in target.channels:
            targets = self.index.get(channel)
            if targets is None:
                targets = self.index[channel] = set()
            targets.add(target)

    def _unindex(self, target):
        for channel in target.channels:
            targets = self.index.get(channel)
            if targets is not None:
                targets.discard(target)
                if not targets:
                    del self.index[channel]

    def drop_connection(self, sid):
        """Forget every subscription of connection *sid*."""
        subs = self.by_sid.get(sid)
        if subs:
            for sub in list(subs.values()):
                self._remove(sub)
        self.by_sid.pop(sid, None)

    def unsubscribe(self, sid, ids):
        """Remove the subscriptions *ids* of *sid*; returns how many existed."""
        subs = self.by_sid.get(sid)
        found = 0
        if subs:
            for sub_id in ids:
                sub = subs.get(sub_id)
                if sub is not None:
                    self._remove(sub)
                    found += 1
        return found

    # -- notifications -----------------------------------------------------------------

    def notify(self, channels, trigger):
        """Queue the subscriptions of *channels* for the next cycle (hub thread only)."""
        index = self.index
        pending = self._pending
        hit = False
        for channel in channels:
            if channel in index:
                pending[channel] = trigger
                hit = True
        if hit:
            self.metrics["notifications"] += 1
            self.metrics["queue_depth"] = len(pending) + len(self._requests)
            self._ensure_running()
            self._wake.set()

    def _request(self, target, trigger):
        """Run *target* in the next cycle (it was notified while running)."""
        if target.alive:
            self._requests[target] = trigger
            self.metrics["queue_depth"] = len(self._pending) + len(self._requests)
            self._ensure_running()
            self._wake.set()

    def _ensure_running(self):
        if self._greenlet is None and not self._stopping:
            self.live.open()
            self._greenlet = gevent.spawn(self._loop)
            self._greenlet.name = f"sbio-broadcaster {self.namespace}"
            if self._pending or self._requests:  # left queued by a stop()
                self._wake.set()

    def _loop(self):
        wake = self._wake
        metrics = self.metrics
        while True:
            wake.wait()
            if self._stopping:
                return
            wake.clear()
            pending, self._pending = self._pending, {}
            requests, self._requests = self._requests, {}
            metrics["queue_depth"] = 0
            metrics["cycles"] += 1
            targets = {}
            index = self.index
            for channel, trigger in pending.items():
                for target in index.get(channel, ()):
                    targets[target] = trigger
            targets.update(requests)
            started = coalesced = 0
            for target, trigger in targets.items():
                if not target.alive:
                    continue
                if target.running:
                    target.dirty = trigger
                    coalesced += 1
                    continue
                target.running = True
                started += 1
                self.pool.spawn(self._run, target, trigger)  # waits while the pool is full
                if self._stopping:
                    return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("broadcaster %s: cycle of %d channel(s), %d run(s) started, "
                          "%d coalesced into running ones; metrics %s", self.namespace,
                          len(pending), started, coalesced, metrics)

    # -- runs ---------------------------------------------------------------------------

    def _call(self, sub, purpose):
        """Run the handler of *sub* as its connection; return the envelope."""
        try:
            with gevent.Timeout(self.live.timeout):
                return self.dispatcher.call_handler(sub.instance, sub.event, sub.args,
                                                    purpose=purpose, subscription=sub)
        except gevent.Timeout:  # fired outside the handler proper
            return error_envelope("timeout", "the handler timed out")

    def _run(self, target, trigger):
        try:
            if isinstance(target, _SharedGroup):
                self._run_group(target, trigger)
            else:
                self._run_single(target, trigger)
        except Exception:
            log.exception("broadcaster %s: re-run of %r failed", self.namespace, target)
        finally:
            target.running = False
            dirty = target.dirty
            if dirty is not _NOT_DIRTY:
                target.dirty = _NOT_DIRTY
                self._request(target, dirty)

    def _run_single(self, sub, trigger):
        if not sub.alive:
            return
        self.metrics["reruns"] += 1
        envelope = self._call(sub, "rerun")
        if not sub.alive:  # unsubscribed, replaced or disconnected meanwhile
            return
        if envelope["ok"]:
            try:
                text = _encode(envelope["data"])
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._unjsonable(sub, exc)
                self._deliver_error(sub, _UNJSONABLE)
                return
            self._deliver_data(sub, text, _fingerprint(text), self._update_tail(trigger, text))
        else:
            self._deliver_error(sub, envelope["error"])

    def _run_group(self, group, trigger):
        method = "on_" + group.event
        runner = None
        for member in list(group.members):
            if not member.ready:  # its first result is being computed: run again after
                member.dirty = trigger
                continue
            if member.instance.is_method_allowed(method):
                runner = member
                break
            self._forbid(member, method)
        if runner is None:
            return
        self.metrics["reruns"] += 1
        envelope = self._call(runner, "rerun")
        if envelope["ok"]:
            try:
                text = _encode(envelope["data"])
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._unjsonable(runner, exc)
                envelope = error_envelope_of(_UNJSONABLE)
        elif envelope["error"]["code"] == "forbidden" and runner.alive:
            # the runner's ACL changed during the run: drop it, run again for the others
            self._forbid(runner, method, envelope["error"])
            group.dirty = trigger
            return
        if not envelope["ok"]:
            for member in list(group.members):
                if not member.ready:  # its first result is being computed: run again after
                    member.dirty = trigger
                elif not member.instance.is_method_allowed(method):
                    self._forbid(member, method)
                else:
                    self._deliver_error(member, envelope["error"])
            return
        # The hot loop of a shared fan-out: data encoded once, one string
        # concatenation and one Engine.IO packet per subscriber.
        fingerprint = _fingerprint(text)
        tail = self._update_tail(trigger, text)
        update = self._push.update
        send = text_sender(self.sio)
        pushed = skipped = 0
        for member in list(group.members):  # a copy: _forbid removes members
            if not member.ready:
                member.dirty = trigger
            elif not member.instance.is_method_allowed(method):
                self._forbid(member, method)
            elif member.last == fingerprint:
                skipped += 1
            else:
                member.last = fingerprint
                send(member.eio_sid, update(member.id_json, tail))
                pushed += 1
        self.metrics["pushes"] += pushed
        self.metrics["skipped_unchanged"] += skipped

    def _unjsonable(self, sub, exc):
        log.error("result of subscribed handler is not JSON-serializable (sid=%s namespace=%s "
                  "event=%s): %s", sub.sid, self.namespace, sub.event, exc)

    def _forbid(self, sub, method, error=None):
        if error is None:
            error = {"code": "forbidden", "message": f"not allowed to call {_short(sub.event)}"}
        self.metrics["errors"] += 1
        self.metrics["dropped"] += 1
        log.info("subscription %r of sid=%s (namespace %s) dropped: %s no longer allowed",
                 sub.id, sub.sid, self.namespace, method)
        self._send_error(sub, error)
        self._remove(sub)

    _update_tail = staticmethod(UpdateEncoder.data_tail)

    def _deliver_data(self, sub, text, fingerprint, tail):
        if sub.last == fingerprint:
            self.metrics["skipped_unchanged"] += 1
            return
        sub.last = fingerprint
        self.metrics["pushes"] += 1
        self._send(sub, self._push.update(sub.id_json, tail))

    def _deliver_error(self, sub, error):
        code = error.get("code")
        if code == "forbidden":
            self._forbid(sub, "on_" + sub.event, error)
            return
        if code == "timeout":
            self.metrics["timeouts"] += 1
        else:
            self.metrics["errors"] += 1
        fingerprint = ("error", code, error.get("message"))
        if sub.last == fingerprint:
            self.metrics["skipped_unchanged"] += 1
            return
        sub.last = fingerprint
        self._send_error(sub, error)

    def _send_error(self, sub, error):
        self.metrics["pushes"] += 1
        self._send(sub, self._push.error(sub.id_json, error))

    def _send(self, sub, text):
        send_text(self.sio, sub.eio_sid, text)

    # -- the sbio:subscribe / sbio:unsubscribe events -----------------------------------

    def handle_subscribe(self, instance, args):
        """``sbio:subscribe`` ``{"id", "event", "args"}``: first result in the ack."""
        if len(args) != 1 or not isinstance(args[0], dict):
            return error_envelope("bad_request", 'sbio:subscribe takes one object '
                                  '{"id": ..., "event": ..., "args": [...]}')
        payload = args[0]
        unknown = set(payload) - {"id", "event", "args"}
        if unknown:
            return error_envelope("bad_request", "sbio:subscribe: unknown field(s) "
                                  + ", ".join(sorted(map(repr, unknown))))
        sub_id = payload.get("id")
        problem = _check_id(sub_id, "sbio:subscribe")
        if problem:
            return error_envelope("bad_request", problem)
        event = payload.get("event")
        if not is_valid_event_name(event):
            return error_envelope("bad_request", f"sbio:subscribe: invalid event name "
                                  f"{_short(event)}")
        call_args = payload.get("args", [])
        if not isinstance(call_args, list):
            return error_envelope("bad_request", 'sbio:subscribe: "args" must be a list')
        method = "on_" + event
        dispatcher = self.dispatcher
        spec = dispatcher.handler_spec(method)
        if spec is None or not instance.is_method_allowed(method):
            # the same forbidden / not_found answer as a call
            return dispatcher.call_handler(instance, event, call_args, purpose="subscribe")
        live_spec = getattr(spec.func, "_sbio_subscribes", None)
        if live_spec is None:
            return error_envelope("bad_request", f"event {_short(event)} cannot be "
                                  f"subscribed to (mark {method} with @subscribes)")
        problem = spec.check_args(event, call_args)
        if problem is not None:
            return error_envelope("bad_request", problem)
        existing = self.by_sid.get(instance.sid, {})
        if sub_id not in existing and len(existing) >= self.live.max_subscriptions:
            return error_envelope("bad_request", f"too many subscriptions on this connection "
                                  f"(limit {self.live.max_subscriptions})")
        size = len(_encode(call_args))
        held = sum(sub.size for key, sub in existing.items() if key != sub_id)
        if held + size > self.live.max_subscription_bytes:
            return error_envelope(
                "bad_request", f"subscription arguments too large: this connection's "
                f"subscriptions would hold {held + size} bytes of arguments (limit "
                f"{self.live.max_subscription_bytes}); unsubscribe first")
        try:
            channels = live_spec.channels.format((instance, *call_args))
        except Exception as exc:
            log.warning("cannot build the channels of %s%r (namespace %s): %s", method,
                        tuple(call_args), self.namespace, exc)
            return error_envelope("bad_request", f"cannot build the channels of "
                                  f"{_short(event)} from these arguments")
        eio_sid = self.sio.manager.eio_sid_from_sid(instance.sid, self.namespace)
        sub = Subscription(instance, eio_sid, sub_id, event, call_args, channels,
                           live_spec.shared)
        sub.size = size
        # Registered before the first run: a notification arriving while it runs
        # marks it dirty, and it runs again once the first result is out.
        sub.running = not sub.shared
        self._add(sub)
        self._ensure_running()
        try:
            envelope = dispatcher.call_handler(instance, event, call_args,
                                               purpose="subscribe", subscription=sub)
        except BaseException:  # killed (GreenletExit): leave nothing behind
            self._remove(sub)
            raise
        finally:
            sub.running = False
        if envelope["ok"]:
            try:
                sub.last = _fingerprint(_encode(envelope["data"]))
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._unjsonable(sub, exc)
                envelope = error_envelope_of(dict(_UNJSONABLE))
        if not envelope["ok"]:
            self._remove(sub)  # a failed subscribe leaves nothing behind
            return envelope
        sub.ready = True
        dirty = sub.dirty
        if dirty is not _NOT_DIRTY and sub.alive:
            sub.dirty = _NOT_DIRTY
            self._request(sub.group or sub, dirty)
        return envelope

    def handle_unsubscribe(self, instance, args):
        """``sbio:unsubscribe`` ``{"id": S}`` or ``{"ids": [...]}``; acks ``data: null``."""
        if len(args) != 1 or not isinstance(args[0], dict):
            return error_envelope("bad_request", 'sbio:unsubscribe takes one object '
                                  '{"id": ...} or {"ids": [...]}')
        payload = args[0]
        if set(payload) == {"id"}:
            ids = [payload["id"]]
        elif set(payload) == {"ids"} and isinstance(payload["ids"], list):
            ids = payload["ids"]
        else:
            return error_envelope("bad_request", 'sbio:unsubscribe takes {"id": ...} or '
                                  '{"ids": [...]}')
        for sub_id in ids:
            problem = _check_id(sub_id, "sbio:unsubscribe")
            if problem:
                return error_envelope("bad_request", problem)
        self.unsubscribe(instance.sid, ids)
        return ok_envelope(None)

    # -- lifecycle ---------------------------------------------------------------------

    def stop(self, timeout=None):
        """Stop the greenlet: join it and the runs in progress, kill what is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        try:
            greenlet = self._greenlet
            if greenlet is not None:
                greenlet.join(timeout)
                if not greenlet.dead:
                    log.warning("broadcaster %s did not stop within %ss: killed",
                                self.namespace, timeout)
                    greenlet.kill(block=True, timeout=1)
            if len(self.pool):
                left = None if deadline is None else max(0, deadline - time.monotonic())
                self.pool.join(timeout=left)
                if len(self.pool):
                    log.warning("broadcaster %s: killing %d re-run(s) still running",
                                self.namespace, len(self.pool))
                    self.pool.kill(block=True, timeout=1)
        finally:
            self._greenlet = None
            self._stopping = False
            self._wake.clear()
            # What was queued stays queued: a later notification restarts the loop.


def _check_id(sub_id, event):
    if isinstance(sub_id, bool) or not isinstance(sub_id, (str, int)):
        return f'{event}: "id" must be a string or an integer, got {type(sub_id).__name__}'
    if isinstance(sub_id, str) and not 0 < len(sub_id) <= _MAX_ID_LENGTH:
        return f'{event}: "id" must have 1 to {_MAX_ID_LENGTH} characters'
    return None


# -- LiveData: one per server ---------------------------------------------------------------


class _BusListener:
    """The bus callback of a LiveData, holding it weakly (a forgotten server is collected)."""

    __slots__ = ("ref", "bus", "__weakref__")

    def __init__(self, live):
        self.ref = weakref.ref(live)
        self.bus = None

    def __call__(self, channels, trigger):
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
        and namespace).
    :param bus: the :class:`Bus` this server's notifications go through (a new
        :class:`LocalBus` by default; the server passes its cluster's Redis bus).

    Making one joins nothing: :meth:`open` (called by ``Server.start()``, or
    by the first subscription of a server that was never started) joins the
    bus and adds the server to :func:`running_servers`; :meth:`stop` undoes it.
    """

    #: Subscriptions one connection may hold in one namespace (``max_subscriptions``).
    max_subscriptions = 1000
    #: Bytes of JSON arguments the subscriptions of one connection may hold in one
    #: namespace (``max_subscription_bytes``).
    max_subscription_bytes = 250_000

    #: The broadcaster class, one per namespace.
    broadcaster_class = Broadcaster

    def __init__(self, server, config=None, bus=None):
        config = config or {}
        self.server = server
        self.pool_size = int(config.get("pool_size", 100))
        self.timeout = float(config.get("timeout", 10))
        self.max_subscriptions = int(config.get("max_subscriptions", self.max_subscriptions))
        self.max_subscription_bytes = int(config.get("max_subscription_bytes",
                                                     self.max_subscription_bytes))
        #: namespace name -> Broadcaster
        self.broadcasters = {}
        self._listener = _BusListener(self)
        self.bus = _check_bus(LocalBus() if bus is None else bus)
        self._joined = False
        self._finalizer = None

    def __repr__(self):
        return f"<LiveData namespaces={sorted(self.broadcasters)}>"

    def add_dispatcher(self, dispatcher):
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

    def broadcaster(self, namespace):
        """The :class:`Broadcaster` of *namespace* (e.g. for its ``metrics``)."""
        return self.broadcasters[namespace]

    @property
    def metrics(self):
        """The metrics of every broadcaster, by namespace."""
        return {name: dict(b.metrics) for name, b in self.broadcasters.items()}

    def resync(self, trigger="resync"):
        """Re-run every subscription of every namespace once; push only what changed.

        For when notifications may have been missed, e.g. after the Redis
        bus of a cluster reconnects (see :mod:`sbio.cluster`).
        """
        for broadcaster in self.broadcasters.values():
            channels = tuple(broadcaster.index)
            if channels:
                broadcaster.notify(channels, trigger)

    def _on_notify(self, channels, trigger):
        for broadcaster in self.broadcasters.values():
            broadcaster.notify(channels, trigger)

    def _join(self, bus):
        self._listener.bus = bus
        bus.subscribe(self._listener)
        # a server dropped without stop() leaves the bus when it is collected
        self._finalizer = weakref.finalize(self, bus.unsubscribe, self._listener)

    def _leave(self):
        self._finalizer.detach()
        self.bus.unsubscribe(self._listener)
        self._listener.bus = None

    def set_bus(self, bus):
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

    def open(self):
        """Join the bus and count the server among :func:`running_servers`. Idempotent."""
        if not self._joined:
            self._joined = True
            self._join(self.bus)
            _set_running(self.server, True)

    def stop(self, timeout=None):
        """Leave the bus and stop every broadcaster (joined, then killed). Idempotent.

        Subscriptions stay registered; a later ``sbio:subscribe`` opens the
        live data again and starts the broadcaster (an in-process test
        server may be used again after ``stop()``).
        """
        if self._joined:
            self._joined = False
            self._leave()
            _set_running(self.server, False)
        deadline = None if timeout is None else time.monotonic() + timeout
        for broadcaster in list(self.broadcasters.values()):
            left = None if deadline is None else max(0, deadline - time.monotonic())
            try:
                broadcaster.stop(left)
            except Exception:
                log.exception("stopping the broadcaster of %s failed", broadcaster.namespace)


def _check_bus(bus):
    if not isinstance(bus, Bus):
        raise TypeError(f"a live-data bus must be a sbio.live.Bus, got {bus!r}")
    return bus
