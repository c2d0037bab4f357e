"""One subscription (:class:`Subscription`), a shared group of them, and the fingerprint
of their results (the text is the server's: ``server.json.canonical``, see
:mod:`sbio.jsonenc`).
"""
import enum
import hashlib
import logging
from typing import Any, Protocol

from ..namespace import Namespace
from ..protocol import UpdateEncoder

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

_MAX_ID_LENGTH = 128
# Results longer than this are remembered by a digest instead of their text.
_FINGERPRINT_TEXT_MAX = 512

# -- subscriptions ------------------------------------------------------------------------

class _Clean(enum.Enum):
    """The type of :data:`_NOT_DIRTY` (an enum, so a type checker narrows it away)."""

    NOT_DIRTY = "not dirty"


_NOT_DIRTY = _Clean.NOT_DIRTY
#: Subscription.value / _SharedGroup.value when no value is kept (None is a JSON value).
_NO_VALUE: Any = object()


class _Sink(Protocol):
    """Where a subscription without a connection sends its updates: a server-side
    watch (:class:`sbio.live.watch.Watch`, which imports this module)."""

    def put_data(self, text: str, trigger: str) -> None: ...

    def put_error(self, error: dict[str, Any]) -> None: ...


class _Target:
    """What the broadcaster runs: one subscription, or one shared group."""

    __slots__ = ("channels", "alive", "running", "dirty", "__weakref__")

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.alive = True
        self.running = False
        # the trigger of a notification that came while running, or _NOT_DIRTY
        self.dirty: str | _Clean = _NOT_DIRTY


class Subscription(_Target):
    """One live subscription of one connection (``self.subscription`` in the handler).

    ``id``, ``event``, ``args``, ``channels`` (concrete names), ``shared``
    and ``sid`` describe it; ``data`` is a dict private to this subscription,
    kept across its re-runs and discarded when it ends (a re-subscribe with
    the same id starts a fresh one).
    """

    __slots__ = ("id", "event", "args", "shared", "data", "instance", "sid", "eio_sid",
                 "id_json", "last", "ready", "group", "size", "delta", "value", "patchable",
                 "sink")

    def __init__(self, instance: Namespace, eio_sid: str, sub_id: str | int, event: str,
                 args: list[Any], channels: tuple[str, ...], shared: bool,
                 delta: bool = False) -> None:
        super().__init__(channels)
        self.instance = instance
        self.sid = instance.sid
        self.eio_sid = eio_sid
        self.id = sub_id
        self.id_json = UpdateEncoder.id_json(sub_id)
        self.event = event
        self.args = args
        self.shared = shared
        self.data: dict[Any, Any] = {}
        self.last: object = None  # fingerprint of the last result (or error) the client has
        self.ready = False   # the first result has been sent
        self.group: _SharedGroup | None = None
        self.size = 0        # bytes of the JSON of args (server.max_subscription_bytes)
        #: ``"delta": true``: later results are pushed as JSON Patches when smaller
        self.delta = delta
        #: the decoded value the client has, to patch against (delta, not shared), or _NO_VALUE
        self.value: Any = _NO_VALUE
        #: a patch may be sent: a data push reached the client since the subscribe and
        #: since the last error (the first push after either is whole, see docs/protocol.md)
        self.patchable = False
        #: None (pushes go to the connection eio_sid), or the server-side watch it feeds
        #: (its eio_sid is then "": no connection)
        self.sink: _Sink | None = None

    def __repr__(self) -> str:
        return (f"<Subscription {self.id!r} {self.event}{tuple(self.args)!r} "
                f"sid={self.sid} channels={list(self.channels)}>")


class _SharedGroup(_Target):
    """The subscriptions of a ``shared=True`` handler with the same arguments."""

    __slots__ = ("key", "event", "args", "members", "deltas", "value", "value_fp")

    def __init__(self, key: tuple[str, str], event: str, args: list[Any],
                 channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.key = key
        self.event = event
        self.args = args
        self.members: dict[Subscription, None] = {}  # an ordered set
        self.deltas = 0    # members with delta=True; the group keeps a value while > 0
        self.value: Any = _NO_VALUE  # the last result decoded, to patch against (once per group)
        #: its fingerprint: members whose last is this one have it
        self.value_fp: str | bytes | None = None

    def __repr__(self) -> str:
        return f"<SharedGroup {self.event}{tuple(self.args)!r} members={len(self.members)}>"


def _fingerprint(text: str) -> str | bytes:
    if len(text) <= _FINGERPRINT_TEXT_MAX:
        return text
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_UNJSONABLE = {"code": "internal",
               "message": "the handler returned a value that cannot be sent as JSON"}



def _check_id(sub_id: object, event: str) -> str | None:
    if isinstance(sub_id, bool) or not isinstance(sub_id, (str, int)):
        return f'{event}: "id" must be a string or an integer, got {type(sub_id).__name__}'
    if isinstance(sub_id, str) and not 0 < len(sub_id) <= _MAX_ID_LENGTH:
        return f'{event}: "id" must have 1 to {_MAX_ID_LENGTH} characters'
    return None
