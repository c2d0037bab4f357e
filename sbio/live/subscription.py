"""One subscription (:class:`Subscription`), a shared group of them, and the encoding and
fingerprint of their results.
"""
import hashlib
import json
import logging

from ..protocol import UpdateEncoder

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

_MAX_ID_LENGTH = 128
# Results longer than this are remembered by a digest instead of their text.
_FINGERPRINT_TEXT_MAX = 512

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



def _check_id(sub_id, event):
    if isinstance(sub_id, bool) or not isinstance(sub_id, (str, int)):
        return f'{event}: "id" must be a string or an integer, got {type(sub_id).__name__}'
    if isinstance(sub_id, str) and not 0 < len(sub_id) <= _MAX_ID_LENGTH:
        return f'{event}: "id" must have 1 to {_MAX_ID_LENGTH} characters'
    return None
