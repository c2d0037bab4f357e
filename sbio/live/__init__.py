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

Modules: :mod:`~sbio.live.notify` (decorators, ``notify()``, the running
servers), :mod:`~sbio.live.bus` (the bus), :mod:`~sbio.live.subscription`
(one subscription, shared groups, result encoding), :mod:`~sbio.live.broadcaster`
(one per namespace), :mod:`~sbio.live.live_data` (one per server),
:mod:`~sbio.live.patch` (the JSON Patches of delta pushes, made and applied),
:mod:`~sbio.live.watch` (server-side watches, ``server.live.watch()``).
"""
# Every name sbio.live had before the split keeps working from here.
from ..adapter import send_text, text_sender  # noqa: F401
from ..channels import channel_name, row_channel, row_wildcard
from ..channels import channel_names as _channel_names  # noqa: F401
from ..context import current_call  # noqa: F401
from ..protocol import (  # noqa: F401
    SUBSCRIBE_EVENT,
    UNSUBSCRIBE_EVENT,
    UPDATE_EVENT,
    UpdateEncoder,
    error_envelope,
    error_envelope_of,
    is_valid_event_name,
    ok_envelope,
)
from ..protocol import short_repr as _short  # noqa: F401
from ..tasks import current_lifecycle  # noqa: F401
from .broadcaster import Broadcaster
from .bus import Bus, LocalBus, _real_get_ident  # noqa: F401
from .live_data import LiveData, _BusListener, _check_bus, live_data_on  # noqa: F401
from .notify import (  # noqa: F401
    MANUAL_TRIGGER,
    _Channels,
    _context_servers,
    _notify_names,
    _publish,
    _set_running,
    _SubscribeSpec,
    _trigger_of,
    notifies,
    notify,
    running_servers,
    subscribes,
)
from .subscription import (  # noqa: F401
    _FINGERPRINT_TEXT_MAX,
    _MAX_ID_LENGTH,
    _NOT_DIRTY,
    _UNJSONABLE,
    Subscription,
    _check_id,
    _fingerprint,
    _SharedGroup,
    _Target,
)
from .watch import Watch

__all__ = ["subscribes", "notifies", "notify", "channel_name", "row_channel", "row_wildcard",
           "LiveData", "Broadcaster",
           "Subscription", "Bus", "LocalBus", "running_servers", "live_data_on", "Watch"]
