"""sbio's wire protocol over socket.io, in one place (``docs/protocol.md``).

* the ack envelopes: :func:`ok_envelope`, :func:`error_envelope`;
* the error codes (:data:`FORBIDDEN`, :data:`NOT_FOUND`, ...);
* the event-name rules: :func:`event_name_problem` (what a handler may be
  registered as), :data:`EVENT_NAME_RE` (the names the ``on_<name>``
  convention maps), :func:`is_valid_event_name`;
* the ack of a raw handler (``@sbio.event(..., raw=True)``): :func:`raw_ack_args`;
* the names of sbio's own events (``sbio:subscribe``, ``sbio:unsubscribe``,
  ``sbio:update``, ``sbio:error``);
* the encoding of every sbio push: :func:`error_push_packet` (``sbio:error``)
  and :class:`UpdateEncoder` (``sbio:update``, framed once per namespace by
  python-socketio's packet encoder, then completed per subscriber by
  concatenation, so a shared fan-out encodes the data once).

It imports nothing of sbio: every module may import it.
"""
import json
import re
from typing import Any, TypeGuard

from socketio import packet as sio_packet

__all__ = [
    "ok_envelope", "error_envelope", "short_repr", "is_valid_event_name", "EVENT_NAME_RE",
    "event_name_problem", "MAX_EVENT_NAME_LENGTH", "RESERVED_EVENT_NAMES", "raw_ack_args",
    "FORBIDDEN", "NOT_FOUND", "BAD_REQUEST", "INTERNAL", "TIMEOUT", "RATE_LIMITED",
    "ERROR_EVENT", "UPDATE_EVENT", "SUBSCRIBE_EVENT", "UNSUBSCRIBE_EVENT",
    "error_push_packet", "UpdateEncoder",
]

# -- error codes (the ``code`` of an error envelope) ---------------------------------------

#: The ACL does not allow this handler for this connection.
FORBIDDEN = "forbidden"
#: No handler of that name.
NOT_FOUND = "not_found"
#: Malformed event, name or arguments.
BAD_REQUEST = "bad_request"
#: The handler raised (details are logged on the server, never sent).
INTERNAL = "internal"
#: The handler timed out.
TIMEOUT = "timeout"
#: The client sends faster than the server allows.
RATE_LIMITED = "rate_limited"

# -- sbio's own events -------------------------------------------------------------------------

#: Push reporting a failed event sent without an ack: ``{"event", "code", "message"}``.
ERROR_EVENT = "sbio:error"
#: Push of a live-data update: ``{"id", "data", "trigger"}``, ``{"id", "patch", "trigger"}``
#: (a JSON Patch against the last value, for ``"delta": true`` subscriptions) or
#: ``{"id", "error"}``.
UPDATE_EVENT = "sbio:update"
#: Event the client sends to subscribe: ``{"id": S, "event": E, "args": [...], "delta": bool}``.
SUBSCRIBE_EVENT = "sbio:subscribe"
#: Event the client sends to unsubscribe: ``{"id": S}`` or ``{"ids": [...]}``.
UNSUBSCRIBE_EVENT = "sbio:unsubscribe"

# -- envelopes -------------------------------------------------------------------------------


def ok_envelope(data: Any) -> dict[str, Any]:
    """The success envelope of an ack: ``{"ok": True, "data": data}``."""
    return {"ok": True, "data": data}


def error_envelope(code: str, message: str) -> dict[str, Any]:
    """The failure envelope of an ack: ``{"ok": False, "error": {...}}``."""
    return {"ok": False, "error": {"code": code, "message": message}}


def error_envelope_of(error: Any) -> dict[str, Any]:
    """The failure envelope carrying an ``error`` object as it is (e.g. ``RpcError.to_dict()``)."""
    return {"ok": False, "error": error}


def raw_ack_args(envelope: dict[str, Any]) -> list[Any]:
    """The arguments of the ack of a raw handler (``@sbio.event(..., raw=True)``).

    A success acks the handler's return value as python-socketio and
    Flask-SocketIO do: a tuple is several arguments, None none, anything else
    one. A failure acks one object ``{"error": {"code": ..., "message": ...}}``.
    """
    if envelope["ok"]:
        data = envelope["data"]
        if data is None:
            return []
        if isinstance(data, tuple):
            return list(data)
        return [data]
    return [{"error": envelope["error"]}]


# -- event names -----------------------------------------------------------------------------

#: The event names the ``on_<name>`` convention maps: letters, digits and ``_``,
#: starting with a letter (``on_login`` handles ``login``). Any other name is
#: registered with ``@sbio.event("name")``.
EVENT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

#: The longest event name a handler may be registered as (in characters).
MAX_EVENT_NAME_LENGTH = 128

#: Event names socket.io reserves: its clients refuse to emit them (socket.io's
#: ``RESERVED_EVENTS``), so no handler may be registered as one.
RESERVED_EVENT_NAMES = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                                  "newListener", "removeListener"})

#: The prefix of sbio's own events (``sbio:subscribe``, ``sbio:error``, ...).
SBIO_EVENT_PREFIX = "sbio:"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_MAX_NAME_IN_MESSAGE = 64


def event_name_problem(name: object) -> str | None:
    """None when a handler may be registered as event *name*, else what is wrong with it.

    Any string is an event name to socket.io; sbio refuses the empty string,
    names longer than :data:`MAX_EVENT_NAME_LENGTH`, control characters,
    names starting with ``sbio:`` (sbio's own events) and
    :data:`RESERVED_EVENT_NAMES`.
    """
    if not isinstance(name, str):
        return f"an event name is a string, not {type(name).__name__}"
    if not name:
        return "the event name is empty"
    if len(name) > MAX_EVENT_NAME_LENGTH:
        return f"the event name is longer than {MAX_EVENT_NAME_LENGTH} characters"
    if name.startswith(SBIO_EVENT_PREFIX):
        return f"event names starting with {SBIO_EVENT_PREFIX!r} are sbio's own"
    if name in RESERVED_EVENT_NAMES:
        return f"{name!r} is reserved by socket.io (its clients cannot emit it)"
    if _CONTROL.search(name):
        return "the event name contains a control character"
    return None


def is_valid_event_name(name: object) -> TypeGuard[str]:
    """True when a handler may be registered as event *name* (:func:`event_name_problem`)."""
    return event_name_problem(name) is None


def short_repr(name: object) -> str:
    """``repr(name)``, cut to a length fit for an error message or a log line."""
    text = repr(name)
    return text if len(text) <= _MAX_NAME_IN_MESSAGE else text[:_MAX_NAME_IN_MESSAGE] + "...'"


# -- pushes ------------------------------------------------------------------------------------


def error_push_packet(namespace: str, event: object, error: dict[str, Any],
                      packet_class: Any = sio_packet.Packet) -> Any:
    """The ``sbio:error`` push (a socket.io EVENT packet) for a failed un-acked *event*."""
    body: dict[str, Any] = {"event": event if isinstance(event, str) else None}
    body.update(error)
    return packet_class(sio_packet.EVENT, namespace=namespace, data=[ERROR_EVENT, body])


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class UpdateEncoder:
    """Encodes the ``sbio:update`` pushes of one namespace as socket.io packet text.

    The framing (packet type, namespace, event name) comes from
    python-socketio's packet encoder (*packet_class*: the server's), once;
    each push is then the framing, the subscription id's JSON and a *tail*
    holding the data, so a fan-out to many subscribers encodes the data once
    (:meth:`data_tail`) and pays one concatenation per subscriber (:meth:`update`).
    """

    __slots__ = ("prefix", "_dumps")

    _MARK = "sbio-update-id"

    def __init__(self, namespace: str, packet_class: Any = sio_packet.Packet) -> None:
        #: the packet class's JSON (a server's: its :class:`~sbio.jsonenc.JSONProvider`)
        self._dumps = packet_class.json.dumps
        framed = packet_class(sio_packet.EVENT, namespace=namespace,
                              data=[UPDATE_EVENT, {"id": self._MARK}]).encode()
        mark = _json(self._MARK) + "}]"
        if not isinstance(framed, str) or not framed.endswith(mark):
            raise RuntimeError(f"unexpected socket.io packet encoding: {framed!r}")
        #: ``2/ns,["sbio:update",{"id":`` -- everything before the id.
        self.prefix = framed[:-len(mark)]

    @staticmethod
    def id_json(sub_id: Any) -> str:
        """The JSON of a subscription id, computed once per subscription."""
        return json.dumps(sub_id)

    @staticmethod
    def data_tail(trigger: Any, text: str) -> str:
        """The part after the id of a data push; *text* is the data's JSON."""
        return ',"trigger":' + json.dumps(trigger) + ',"data":' + text + "}]"

    @staticmethod
    def patch_tail(trigger: Any, patch_text: str) -> str:
        """The part after the id of a delta push; *patch_text* is the JSON Patch's JSON."""
        return ',"trigger":' + json.dumps(trigger) + ',"patch":' + patch_text + "}]"

    def update(self, id_json: str, tail: str) -> str:
        """The packet text of one push: ``{"id": ..., <tail>``."""
        return self.prefix + id_json + tail

    def error(self, id_json: str, error: Any) -> str:
        """The packet text of an error push ``{"id": ..., "error": error}``."""
        return self.prefix + id_json + ',"error":' + self._dumps(error, separators=(",", ":")) \
            + "}]"
