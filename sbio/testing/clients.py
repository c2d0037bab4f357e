"""What both test clients share: :class:`CallError`, the events log, :class:`Subscription`."""
from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from ..errors import RpcError, SbioError, SbioTimeoutError
from ..live.patch import apply_patch

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Self
    else:
        from typing_extensions import Self

__all__ = ["CallError", "Subscription"]


class CallError(RpcError):
    """A test client's call was answered with ``{"ok": false, "error": ...}``.

    ``code`` and ``message`` are the error's; for an ``internal`` error of an
    in-process client, ``__cause__`` is the exception the handler raised. An
    in-process client's call the connection dropped before it was answered
    raises it too, with code ``"disconnected"`` (as sbio.js does).
    """

    __test__ = False


class _ClientBase:
    """What both test clients share: the received-events log and waiting on it."""

    __test__ = False

    def __init__(self, namespace: str, timeout: float) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.events: list[tuple[str, list[Any]]] = []
        self._arrived = gevent.event.Event()
        #: id -> Subscription (see subscribe())
        self.subscriptions: dict[Any, Subscription] = {}
        self._sub_ids = itertools.count(1)

    # -- what each client implements ---------------------------------------------

    def _call(self, event: str, args: Any, timeout: float | None
              ) -> tuple[Any, BaseException | None]:
        """Send *event* with an ack; return (the ack's first value, the server's exception)."""
        raise NotImplementedError

    def _call_raw(self, event: str, args: Any, timeout: float | None) -> list[Any]:
        """Send *event* with an ack; return the ack's arguments (a list)."""
        raise NotImplementedError

    def disconnect(self) -> None:
        """Disconnect. Idempotent."""
        raise NotImplementedError

    def _take_server_error(self, event: str) -> BaseException | None:
        """The exception a handler raised for *event* on this connection, if known."""
        return None

    # -- shared ------------------------------------------------------------------

    def _record(self, event: str, args: Any) -> None:
        self.events.append((event, list(args)))
        if event == "sbio:update":
            self._route_update(args)
        self._arrived.set()

    def received(self, event: str | None = None) -> list[Any]:
        """Every event received so far (or only *event*), as ``[(event, args)]``
        or, with *event*, a list of argument lists."""
        if event is None:
            return list(self.events)
        return [args for name, args in self.events if name == event]

    def receive(self, event: str, timeout: float | None = None, count: int = 1) -> list[Any]:
        """Wait until *count* ``event`` events have been received; return the last's args.

        Raises :class:`~sbio.SbioTimeoutError` (a :class:`TimeoutError`) after
        *timeout* seconds (the client's default).
        """
        timeout = self.timeout if timeout is None else timeout
        with gevent.Timeout(timeout, SbioTimeoutError(
                f"{count} {event!r} event(s) not received within {timeout}s "
                f"(got: {[name for name, _ in self.events]})")):
            while True:
                matching = self.received(event)
                if len(matching) >= count:
                    return matching[count - 1]
                self._arrived.clear()
                self._arrived.wait()

    @staticmethod
    def _unwrap(envelope: Any, cause: BaseException | None = None) -> Any:
        if not isinstance(envelope, dict) or "ok" not in envelope:
            raise SbioError(f"the server answered with a non-envelope ack: {envelope!r}")
        if envelope["ok"]:
            return envelope.get("data")
        error = envelope.get("error") or {}
        exc = CallError(error.get("code", "unknown"), error.get("message", ""))
        if cause is not None:
            raise exc from cause
        raise exc

    def call(self, event: str, *args: Any, timeout: float | None = None) -> Any:
        """Call *event* with an ack; return its data or raise :class:`CallError`."""
        envelope, cause = self._call(event, args, timeout)
        return self._unwrap(envelope, cause)

    def call_envelope(self, event: str, *args: Any, timeout: float | None = None) -> Any:
        """Call *event* with an ack and return the raw envelope dict."""
        return self._call(event, args, timeout)[0]

    def call_raw(self, event: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """Call *event* with an ack and return the ack's arguments as a list.

        For raw handlers (``@sbio.event(name, raw=True)``, ``raw_acks = True``):
        a handler returning ``(1, 2)`` gives ``[1, 2]``, None gives ``[]``, a
        failure ``[{"error": {"code": ..., "message": ...}}]``. An in-process
        client with ``raise_server_errors`` raises :class:`CallError` instead
        when the handler raised, with that exception as ``__cause__``.
        """
        return self._call_raw(event, args, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- live data ---------------------------------------------------------------

    def subscribe(self, event: str, *args: Any, id: str | int | None = None,
                  timeout: float | None = None, delta: bool = False) -> Subscription:
        """Subscribe to ``on_<event>(*args)``; return a :class:`Subscription`.

        The first result is in ``.data``; later ``sbio:update`` pushes land in
        ``.updates`` / ``.errors``. Subscribing again with the same *id*
        replaces the subscription (a new :class:`Subscription` is returned).
        ``delta=True`` asks for JSON Patch pushes (``"delta": true``); they
        are applied, so ``.data`` and ``.updates`` hold whole values either
        way (``.pushes`` has the raw bodies). Raises :class:`CallError` when
        the server refuses it.
        """
        sub_id = f"s{next(self._sub_ids)}" if id is None else id
        sub = Subscription(self, sub_id, event, list(args))
        old = self.subscriptions.get(sub_id)
        if old is not None:
            old.active = False
        # Registered first: an update may overtake the ack.
        self.subscriptions[sub_id] = sub
        payload = {"id": sub_id, "event": event, "args": list(args)}
        if delta:
            payload["delta"] = True
        try:
            envelope, cause = self._call("sbio:subscribe", [payload], timeout)
            if cause is None and isinstance(envelope, dict) and not envelope.get("ok", True):
                cause = self._take_server_error(event)
            data = self._unwrap(envelope, cause)
        except BaseException:
            if self.subscriptions.get(sub_id) is sub:
                del self.subscriptions[sub_id]
            sub.active = False
            raise
        sub._first(data)
        return sub

    def unsubscribe(self, *subs: Subscription | str | int, timeout: float | None = None
                    ) -> Any:
        """End subscriptions (:class:`Subscription` objects or ids); one ``{"ids"}`` call."""
        ids = [s.id if isinstance(s, Subscription) else s for s in subs]
        for sub_id in ids:
            sub = self.subscriptions.pop(sub_id, None)
            if sub is not None:
                sub.active = False
        payload = {"id": ids[0]} if len(ids) == 1 else {"ids": ids}
        return self._unwrap(self._call("sbio:unsubscribe", [payload], timeout)[0])

    def _route_update(self, args: Any) -> None:
        body = args[0] if args else None
        if isinstance(body, dict):
            sub = self.subscriptions.get(body.get("id"))
            if sub is not None:
                sub._push(body)


class Subscription:
    """A live subscription of a test client (from ``client.subscribe(...)``).

    ``data`` is the latest result (the first one, then each update);
    ``updates`` the data of every ``sbio:update`` received after the first
    result; ``errors`` every pushed error (``{"code", "message"}``);
    ``pushes`` every raw ``sbio:update`` body, in order.
    """

    __test__ = False

    def __init__(self, client: _ClientBase, id: str | int, event: str, args: list[Any]
                 ) -> None:
        self.client = client
        self.id = id
        self.event = event
        self.args = args
        self.data: Any = None
        self.updates: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.pushes: list[dict[str, Any]] = []
        self.active = True
        self._seen = 0
        self._values: list[Any] = []  # the whole value of each push (None for an error)
        self._has_value = False   # a data push arrived: the next patch applies to .data
        self._updated = False     # a data push arrived before the ack
        #: patch pushes dropped: they came before any whole push (they belong to the
        #: subscription this one replaced; the server pushes whole first)
        self.stale_patches: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<Subscription {self.id!r} {self.event}{tuple(self.args)!r}>"

    def _first(self, data: Any) -> None:
        """The ack's first result: kept unless an update overtook it (that one is fresher)."""
        if not self._updated:
            self.data = data

    def _push(self, body: dict[str, Any]) -> None:
        if "patch" in body and not self._has_value:
            self.stale_patches.append(body)
            return
        self.pushes.append(body)
        if body.get("error") is not None:
            self.errors.append(body["error"])
            self._has_value = False  # the next data push is whole
            self._values.append(None)
            return
        if "patch" in body:
            self.data = apply_patch(self.data, body["patch"])
        else:
            self.data = body.get("data")
        self._has_value = self._updated = True
        self.updates.append(self.data)
        self._values.append(self.data)

    def wait_update(self, timeout: float | None = None) -> Any:
        """Wait for the next push not yet returned by this method; return its data.

        An error push raises :class:`CallError` (with the server's exception
        as ``__cause__`` for an in-process client, when known). Raises
        :class:`~sbio.SbioTimeoutError` (a :class:`TimeoutError`) after *timeout*
        seconds (the client's default).
        """
        client = self.client
        timeout = client.timeout if timeout is None else timeout
        with gevent.Timeout(timeout, SbioTimeoutError(
                f"no sbio:update for subscription {self.id!r} ({self.event}) within "
                f"{timeout}s ({len(self.pushes)} received, {self._seen} already seen)")):
            while len(self.pushes) <= self._seen:
                client._arrived.clear()
                client._arrived.wait()
        body = self.pushes[self._seen]
        value = self._values[self._seen]
        self._seen += 1
        error = body.get("error")
        if error is not None:
            exc = CallError(error.get("code", "unknown"), error.get("message", ""))
            cause = client._take_server_error(self.event)
            if cause is not None:
                raise exc from cause
            raise exc
        return value

    def unsubscribe(self, timeout: float | None = None) -> Any:
        """End this subscription."""
        return self.client.unsubscribe(self, timeout=timeout)
