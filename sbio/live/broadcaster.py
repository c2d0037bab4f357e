"""The broadcaster: the subscriptions of one namespace and the greenlet that re-runs them."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol, cast

import gevent
import gevent.event
import gevent.pool
from gevent.greenlet import Greenlet

from ..adapter import send_text, text_sender
from ..channels import WILDCARD, wildcard_prefix
from ..dispatch import NamespaceDispatcher
from ..namespace import Namespace
from ..protocol import (
    UpdateEncoder,
    error_envelope,
    error_envelope_of,
    is_valid_event_name,
    ok_envelope,
)
from ..protocol import short_repr as _short
from .patch import make_patch
from .subscription import (
    _NO_VALUE,
    _NOT_DIRTY,
    _UNJSONABLE,
    Subscription,
    _check_id,
    _fingerprint,
    _SharedGroup,
    _Sink,
    _Target,
)


class _Live(Protocol):
    """What a broadcaster needs of its :class:`~sbio.live.LiveData` (which imports
    this module): the ``[broadcaster]`` settings and ``open()``."""

    pool_size: int
    timeout: float
    max_subscriptions: int
    max_subscription_bytes: int
    max_delta_bytes: int

    def open(self) -> None: ...

#: An ack envelope: ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": {...}}``
_Envelope = dict[str, Any]

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

# -- the broadcaster ----------------------------------------------------------------------


class Broadcaster:
    """The subscriptions of one namespace and the greenlet that re-runs them.

    Owned by :class:`LiveData`; its greenlet starts on first use and blocks
    on its queue between notifications. ``metrics`` counts, since creation:

    ``notifications``  notifications that matched at least one subscription
    ``cycles``         times the queue was drained
    ``reruns``         handler runs (a shared group counts once)
    ``coalesced``      runs saved by folding notifications into one run: a channel
                       notified again before its subscriptions ran (each of them),
                       a subscription reached by several channels of one cycle,
                       or notified again while its next run is already due
    ``pushes``         ``sbio:update`` packets sent (data, patch or error)
    ``patches``        of those, delta pushes sent as a JSON Patch
    ``skipped_unchanged`` runs whose result the client already had
    ``errors``         runs that ended in an error (timeouts excluded)
    ``timeouts``       runs stopped by the per-run timeout
    ``dropped``        subscriptions dropped by the server (ACL revoked)
    ``queue_depth``    notified channels and requested runs waiting now
    """

    def __init__(self, live: _Live, dispatcher: NamespaceDispatcher) -> None:
        self.live = live
        self.dispatcher = dispatcher
        self.namespace = dispatcher.name
        self.sio = dispatcher.server.sio
        #: sid -> {subscription id -> Subscription}
        self.by_sid: dict[str, dict[str | int, Subscription]] = {}
        #: channel -> set of targets (Subscription, or _SharedGroup for shared ones)
        self.index: dict[str, set[_Target]] = {}
        #: (event, canonical args) -> _SharedGroup
        self.groups: dict[tuple[str, str], _SharedGroup] = {}
        self.metrics = dict.fromkeys(
            ("notifications", "cycles", "reruns", "coalesced", "pushes", "patches",
             "skipped_unchanged",
             "errors", "timeouts", "dropped", "queue_depth"), 0)
        self._pending: dict[str, str] = {}  # channel -> trigger, coalesced until the next cycle
        # target -> trigger: runs asked for outside notifications
        self._requests: dict[_Target, str] = {}
        self._wake = gevent.event.Event()
        self._greenlet: Greenlet[[], None] | None = None
        self._stopping = False
        self.pool = gevent.pool.Pool(live.pool_size)
        self._push = UpdateEncoder(self.namespace, self.sio.packet_class)
        #: the canonical text of a result (sorted keys), by the server's JSON
        #: provider: what is pushed is what is compared with the last push
        self._encode = dispatcher.server.json.canonical
        #: compact text of what is not compared (JSON Patches), by the same provider
        self._dumps = dispatcher.server.json.dumps

    def __repr__(self) -> str:
        return f"<Broadcaster {self.namespace} subscriptions={self.subscription_count()}>"

    # -- registry --------------------------------------------------------------------

    def subscription_count(self) -> int:
        """How many subscriptions this namespace holds."""
        return sum(len(subs) for subs in self.by_sid.values())

    def registry_sizes(self) -> dict[str, int]:
        """Sizes of every registry (for leak checks and debugging)."""
        return {"connections": len(self.by_sid), "subscriptions": self.subscription_count(),
                "channels": len(self.index), "groups": len(self.groups),
                "pending": len(self._pending), "requests": len(self._requests),
                "running": len(self.pool)}

    def subscriptions_of(self, sid: str) -> dict[str | int, Subscription]:
        """The live subscriptions of connection *sid*, by id."""
        return dict(self.by_sid.get(sid, {}))

    def _add(self, sub: Subscription) -> None:
        subs = self.by_sid.get(sub.sid)
        if subs is None:
            subs = self.by_sid[sub.sid] = {}
        old = subs.get(sub.id)
        if old is not None:
            self._remove(old)
            subs = self.by_sid.setdefault(sub.sid, {})
        subs[sub.id] = sub
        if sub.shared:
            key = (sub.event, self._encode(sub.args))
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _SharedGroup(key, sub.event, sub.args, sub.channels)
                self._index(group)
            group.members[sub] = None
            sub.group = group
            if sub.delta:
                group.deltas += 1
        else:
            self._index(sub)

    def _remove(self, sub: Subscription) -> None:
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
            if group.members.pop(sub, _NOT_DIRTY) is not _NOT_DIRTY and sub.delta:
                group.deltas -= 1
                if not group.deltas:  # nobody to patch for: forget the value
                    group.value, group.value_fp = _NO_VALUE, None
            if not group.members:
                group.alive = False
                if self.groups.get(group.key) is group:
                    del self.groups[group.key]
                self._unindex(group)
                self._requests.pop(group, None)

    def _index(self, target: _Target) -> None:
        for channel in target.channels:
            targets = self.index.get(channel)
            if targets is None:
                targets = self.index[channel] = set()
            targets.add(target)

    def _unindex(self, target: _Target) -> None:
        for channel in target.channels:
            targets = self.index.get(channel)
            if targets is not None:
                targets.discard(target)
                if not targets:
                    del self.index[channel]

    def drop_connection(self, sid: str) -> int:
        """Forget every subscription of connection *sid*; returns how many there were."""
        subs = self.by_sid.get(sid)
        found = 0
        if subs:
            for sub in list(subs.values()):
                self._remove(sub)
                found += 1
        self.by_sid.pop(sid, None)
        return found

    def unsubscribe(self, sid: str, ids: Iterable[str | int]) -> int:
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

    def notify(self, channels: Iterable[str], trigger: str) -> None:
        """Queue the subscriptions of *channels* for the next cycle (hub thread only)."""
        index = self.index
        pending = self._pending
        hit = False
        for channel in channels:
            targets = index.get(channel)
            if targets:
                if channel in pending:  # not run since its last notification: one run for both
                    self.metrics["coalesced"] += len(targets)
                pending[channel] = trigger
                hit = True
            elif channel[-1:] == WILDCARD and self._notify_wildcard(channel, trigger):
                hit = True
        if hit:
            self.metrics["notifications"] += 1
            self.metrics["queue_depth"] = len(pending) + len(self._requests)
            self._ensure_running()
            self._wake.set()

    def _notify_wildcard(self, channel: str, trigger: str) -> bool:
        """``"poll:*"``: queue every indexed channel starting with ``poll:``; True if any.

        O(channels indexed in this namespace): sbio.sa sends it for bulk
        statements and very large transactions only.
        """
        prefix = wildcard_prefix(channel)
        if prefix is None:
            return False
        pending = self._pending
        hit = False
        for name in self.index:
            if name.startswith(prefix):
                pending[name] = trigger
                hit = True
        return hit

    def _request(self, target: _Target, trigger: str) -> None:
        """Run *target* in the next cycle (it was notified while running)."""
        if target.alive:
            self._requests[target] = trigger
            self.metrics["queue_depth"] = len(self._pending) + len(self._requests)
            self._ensure_running()
            self._wake.set()

    def _ensure_running(self) -> None:
        if self._greenlet is None and not self._stopping:
            self.live.open()
            self._greenlet = gevent.spawn(self._loop)
            self._greenlet.name = f"sbio-broadcaster {self.namespace}"
            if self._pending or self._requests:  # left queued by a stop()
                self._wake.set()

    def _loop(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            if self._stopping:
                return
            wake.clear()
            # One cycle per call: its locals (the targets, which hold their
            # Namespace instances) are gone while this loop waits for the next
            # notification, so a disconnected instance is not kept alive.
            if not self._cycle():
                return

    def _cycle(self) -> bool:
        """Run (or mark) every target of what is queued; False when stopping."""
        metrics = self.metrics
        pending, self._pending = self._pending, {}
        requests, self._requests = self._requests, {}
        metrics["queue_depth"] = 0
        metrics["cycles"] += 1
        targets: dict[_Target, str] = {}
        index = self.index
        reached = len(requests)
        for channel, trigger in pending.items():
            channel_targets = index.get(channel, ())
            reached += len(channel_targets)
            for target in channel_targets:
                targets[target] = trigger
        targets.update(requests)
        folded = reached - len(targets)  # reached through several channels: one run
        started = coalesced = 0
        for target, trigger in targets.items():
            if not target.alive:
                continue
            if target.running:
                if target.dirty is not _NOT_DIRTY:
                    folded += 1  # its next run is due already: this joins it
                target.dirty = trigger
                coalesced += 1
                continue
            target.running = True
            started += 1
            self.pool.spawn(self._run, target, trigger)  # waits while the pool is full
            if self._stopping:
                return False
        metrics["coalesced"] += folded
        if log.isEnabledFor(logging.DEBUG):
            log.debug("broadcaster %s: cycle of %d channel(s), %d run(s) started, "
                      "%d coalesced into running ones; metrics %s", self.namespace,
                      len(pending), started, coalesced, metrics)
        return True

    # -- runs ---------------------------------------------------------------------------

    def _call(self, sub: Subscription, purpose: str) -> _Envelope:
        """Run the handler of *sub* as its connection; return the envelope."""
        try:
            with gevent.Timeout(self.live.timeout):
                envelope: _Envelope = self.dispatcher.call_handler(
                    sub.instance, sub.event, sub.args, purpose=purpose, subscription=sub)
                return envelope
        except gevent.Timeout:  # fired outside the handler proper
            return error_envelope("timeout", "the handler timed out")

    def _run(self, target: _Target, trigger: str) -> None:
        try:
            if isinstance(target, _SharedGroup):
                self._run_group(target, trigger)
            elif isinstance(target, Subscription):
                self._run_single(target, trigger)
        except Exception:
            log.exception("broadcaster %s: re-run of %r failed", self.namespace, target)
        finally:
            target.running = False
            dirty = target.dirty
            if dirty is not _NOT_DIRTY:
                target.dirty = _NOT_DIRTY
                self._request(target, dirty)

    def _run_single(self, sub: Subscription, trigger: str) -> None:
        if not sub.alive:
            return
        self.metrics["reruns"] += 1
        envelope = self._call(sub, "rerun")
        if not sub.alive:  # unsubscribed, replaced or disconnected meanwhile
            return
        if envelope["ok"]:
            try:
                text = self._encode(envelope["data"])
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._unjsonable(sub, exc)
                self._deliver_error(sub, _UNJSONABLE)
                return
            if sub.sink is not None:
                self._deliver_watch(sub, sub.sink, text, _fingerprint(text), trigger)
            elif sub.delta:
                self._deliver_delta(sub, text, _fingerprint(text), trigger)
            else:
                self._deliver_data(sub, text, _fingerprint(text),
                                   self._update_tail(trigger, text))
        else:
            self._deliver_error(sub, envelope["error"])

    def _run_group(self, group: _SharedGroup, trigger: str) -> None:
        method = self.dispatcher.acl_name(group.event)
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
                text = self._encode(envelope["data"])
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
        # Delta members holding the group's previous value get one patch, made once.
        had, patch_tail = self._group_patch(group, text, fingerprint, trigger) \
            if group.deltas else (None, None)
        update = self._push.update
        send = text_sender(self.sio)
        pushed = skipped = patched = 0
        for member in list(group.members):  # a copy: _forbid removes members
            if not member.ready:
                member.dirty = trigger
            elif not member.instance.is_method_allowed(method):
                self._forbid(member, method)
            elif member.last == fingerprint:
                skipped += 1
            elif member.sink is not None:  # a server-side watch
                self._deliver_watch(member, member.sink, text, fingerprint, trigger)
            elif patch_tail is not None and member.patchable and member.last == had:
                member.last = fingerprint
                send(member.eio_sid, update(member.id_json, patch_tail))
                pushed += 1
                patched += 1
            else:
                member.last = fingerprint
                member.patchable = member.delta
                send(member.eio_sid, update(member.id_json, tail))
                pushed += 1
        self.metrics["pushes"] += pushed
        self.metrics["patches"] += patched
        self.metrics["skipped_unchanged"] += skipped

    def _unjsonable(self, sub: Subscription, exc: BaseException) -> None:
        log.error("result of subscribed handler is not JSON-serializable (sid=%s namespace=%s "
                  "event=%s): %s", sub.sid, self.namespace, sub.event, exc)

    def _forbid(self, sub: Subscription, method: str,
                error: dict[str, Any] | None = None) -> None:
        if error is None:
            error = {"code": "forbidden", "message": f"not allowed to call {_short(sub.event)}"}
        self.metrics["errors"] += 1
        self.metrics["dropped"] += 1
        log.info("subscription %r of sid=%s (namespace %s) dropped: %s no longer allowed",
                 sub.id, sub.sid, self.namespace, method)
        self._send_error(sub, error)
        self._remove(sub)

    _update_tail = staticmethod(UpdateEncoder.data_tail)

    def _deliver_data(self, sub: Subscription, text: str, fingerprint: str | bytes,
                      tail: str) -> None:
        if sub.last == fingerprint:
            self.metrics["skipped_unchanged"] += 1
            return
        sub.last = fingerprint
        self.metrics["pushes"] += 1
        self._send(sub, self._push.update(sub.id_json, tail))

    # -- delta pushes (a JSON Patch against the last value the subscriber got) -------------

    def _decoded(self, text: str) -> Any:
        """The value a client decodes from *text*, if a delta may be made against it."""
        if len(text) > self.live.max_delta_bytes:
            return _NO_VALUE
        return json.loads(text)

    def _patch_text(self, old: Any, new: Any, whole: int) -> str | None:
        """The JSON of the patch from *old* to *new*, or None when not shorter than *whole*."""
        text = self._dumps(make_patch(old, new))
        return text if len(text) < whole else None

    def _deliver_delta(self, sub: Subscription, text: str, fingerprint: str | bytes,
                       trigger: str) -> None:
        """Push a changed result of a ``"delta": true`` subscription: a patch when smaller."""
        if sub.last == fingerprint:
            self.metrics["skipped_unchanged"] += 1
            return
        value = self._decoded(text)
        patch = None
        if sub.patchable and value is not _NO_VALUE and sub.value is not _NO_VALUE:
            patch = self._patch_text(sub.value, value, len(text))
        sub.value = value
        sub.patchable = True
        sub.last = fingerprint
        self.metrics["pushes"] += 1
        if patch is None:
            self._send(sub, self._push.update(sub.id_json, self._update_tail(trigger, text)))
        else:
            self.metrics["patches"] += 1
            self._send(sub, self._push.update(sub.id_json, self._push.patch_tail(trigger, patch)))

    def _group_patch(self, group: _SharedGroup, text: str, fingerprint: str | bytes,
                     trigger: str) -> tuple[str | bytes | None, str | None]:
        """``(fingerprint the patch applies to, patch tail or None)`` of one group run.

        Made once per run for every delta member; the group keeps the new
        value for the next one.
        """
        had = group.value_fp
        if had == fingerprint:
            return had, None
        value = self._decoded(text)
        tail = None
        if value is not _NO_VALUE and group.value is not _NO_VALUE:
            patch = self._patch_text(group.value, value, len(text))
            if patch is not None:
                tail = self._push.patch_tail(trigger, patch)
        group.value, group.value_fp = value, (None if value is _NO_VALUE else fingerprint)
        return had, tail

    def _deliver_error(self, sub: Subscription, error: dict[str, Any]) -> None:
        sub.value, sub.patchable = _NO_VALUE, False  # the next result is pushed whole
        code = error.get("code")
        if code == "forbidden":
            self._forbid(sub, self.dispatcher.acl_name(sub.event), error)
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

    def _send_error(self, sub: Subscription, error: dict[str, Any]) -> None:
        self.metrics["pushes"] += 1
        if sub.sink is not None:
            sub.sink.put_error(error)
        else:
            self._send(sub, self._push.error(sub.id_json, error))

    def _deliver_watch(self, sub: Subscription, sink: _Sink, text: str,
                       fingerprint: str | bytes, trigger: str) -> None:
        """A changed result for a server-side watch: its JSON, decoded by the watch."""
        if sub.last == fingerprint:
            self.metrics["skipped_unchanged"] += 1
            return
        sub.last = fingerprint
        self.metrics["pushes"] += 1
        sink.put_data(text, trigger)

    def _send(self, sub: Subscription, text: str) -> None:
        send_text(self.sio, sub.eio_sid, text)

    # -- the sbio:subscribe / sbio:unsubscribe events -----------------------------------

    def handle_subscribe(self, instance: Namespace, args: list[Any]) -> _Envelope:
        """``sbio:subscribe`` ``{"id", "event", "args", "delta"}``: first result in the ack."""
        if len(args) != 1 or not isinstance(args[0], dict):
            return error_envelope("bad_request", 'sbio:subscribe takes one object '
                                  '{"id": ..., "event": ..., "args": [...]}')
        payload = args[0]
        unknown = set(payload) - {"id", "event", "args", "delta"}
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
        delta = payload.get("delta", False)
        if not isinstance(delta, bool):
            return error_envelope("bad_request", 'sbio:subscribe: "delta" must be true or false')
        dispatcher = self.dispatcher
        spec = dispatcher.handler(event)
        if spec is None or not instance.is_method_allowed(spec.acl_name):
            # the same forbidden / not_found answer as a call
            return dispatcher.call_handler(instance, event, call_args, purpose="subscribe")
        live_spec = getattr(spec.func, "_sbio_subscribes", None)
        if live_spec is None:
            return error_envelope("bad_request", f"event {_short(event)} cannot be "
                                  f"subscribed to (mark {spec.attr} with @subscribes)")
        limited = dispatcher.admit_handler(instance, event)
        if limited is not None:
            return {"ok": False, "error": limited}
        problem = spec.check_args(event, call_args)
        if problem is not None:
            return error_envelope("bad_request", problem)
        existing = self.by_sid.get(instance.sid, {})
        if sub_id not in existing and len(existing) >= self.live.max_subscriptions:
            return error_envelope("bad_request", f"too many subscriptions on this connection "
                                  f"(limit {self.live.max_subscriptions})")
        size = len(self._encode(call_args))
        held = sum(sub.size for key, sub in existing.items() if key != sub_id)
        if held + size > self.live.max_subscription_bytes:
            return error_envelope(
                "bad_request", f"subscription arguments too large: this connection's "
                f"subscriptions would hold {held + size} bytes of arguments (limit "
                f"{self.live.max_subscription_bytes}); unsubscribe first")
        try:
            channels = live_spec.channels.format((instance, *call_args))
        except Exception as exc:
            log.warning("cannot build the channels of %s%r (namespace %s): %s", event,
                        tuple(call_args), self.namespace, exc)
            return error_envelope("bad_request", f"cannot build the channels of "
                                  f"{_short(event)} from these arguments")
        eio_sid = self.sio.manager.eio_sid_from_sid(instance.sid, self.namespace)
        sub = Subscription(instance, eio_sid, cast("str | int", sub_id), event, call_args,
                           channels, live_spec.shared,  # the id passed _check_id
                           delta and self.live.max_delta_bytes > 0)
        sub.size = size
        return self._start(sub)[0]

    def _start(self, sub: Subscription) -> tuple[_Envelope, str | None]:
        """Register *sub* and compute its first result: ``(envelope, its JSON or None)``.

        A failure leaves nothing registered.
        """
        # Registered before the first run: a notification arriving while it runs
        # marks it dirty, and it runs again once the first result is out.
        sub.running = not sub.shared
        self._add(sub)
        self._ensure_running()
        text = None
        try:
            envelope = self.dispatcher.call_handler(sub.instance, sub.event, sub.args,
                                                    purpose="subscribe", subscription=sub)
        except BaseException:  # killed (GreenletExit): leave nothing behind
            self._remove(sub)
            raise
        finally:
            sub.running = False
        if envelope["ok"]:
            try:
                text = self._encode(envelope["data"])
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                self._unjsonable(sub, exc)
                envelope = error_envelope_of(dict(_UNJSONABLE))
            else:
                sub.last = _fingerprint(text)
                if sub.delta and sub.group is not None:
                    self._keep_first_value(sub.group, sub, text)
        if not envelope["ok"]:
            self._remove(sub)  # a failed subscribe leaves nothing behind
            return envelope, None
        sub.ready = True
        dirty = sub.dirty
        if dirty is not _NOT_DIRTY and sub.alive:
            sub.dirty = _NOT_DIRTY
            self._request(sub.group or sub, dirty)
        return envelope, text

    def start_watch(self, instance: Namespace, event: str, args: list[Any], sink: _Sink
                    ) -> tuple[_Envelope, str | None, Subscription | None]:
        """Subscribe *instance* (a watch's own, see :mod:`sbio.live.watch`) to *event*.

        The checks of ``sbio:subscribe`` (ACL, ``@subscribes``, arguments),
        then the first run. Returns ``(envelope, first result's JSON or None,
        the Subscription)``; its updates go to *sink* (``sink.put_data(text,
        trigger)``, ``sink.put_error(error)``) instead of a connection.
        """
        dispatcher = self.dispatcher
        spec = dispatcher.handler(event)
        if spec is None or not instance.is_method_allowed(spec.acl_name):
            return dispatcher.call_handler(instance, event, args, purpose="subscribe"), None, None
        live_spec = getattr(spec.func, "_sbio_subscribes", None)
        if live_spec is None:
            return error_envelope("bad_request", f"event {_short(event)} cannot be subscribed "
                                  f"to (mark {spec.attr} with @subscribes)"), None, None
        problem = spec.check_args(event, args)
        if problem is not None:
            return error_envelope("bad_request", problem), None, None
        try:
            channels = live_spec.channels.format((instance, *args))
        except Exception as exc:
            return error_envelope("bad_request", f"cannot build the channels of "
                                  f"{_short(event)} from these arguments: {exc}"), None, None
        sub = Subscription(instance, "", "watch", event, args, channels, live_spec.shared)
        sub.sink = sink
        envelope, text = self._start(sub)
        return envelope, text, sub

    def _keep_first_value(self, group: _SharedGroup, sub: Subscription, text: str) -> None:
        """The first value a shared group of delta members can patch against, from an ack.

        (The member itself gets its first push whole, like any delta
        subscription: a client cannot tell a patch of the subscription it
        replaced from one of the new one until then.)
        """
        if group.value is _NO_VALUE and sub.alive:
            group.value = self._decoded(text)
            # sub.last is the fingerprint of *text* (set by _start just before)
            group.value_fp = None if group.value is _NO_VALUE else cast("str | bytes", sub.last)

    def handle_unsubscribe(self, instance: Namespace, args: list[Any]) -> _Envelope:
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

    def stop(self, timeout: float | None = None) -> None:
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
