"""Notifying a cluster from a program that is not a server: :func:`notify_remote`."""
import threading
import uuid
from collections.abc import Iterable

from ..channels import channel_names
from ..live import MANUAL_TRIGGER
from .bus import encode_bus_message
from .connection import Client, make_client, setting

# (url, timeout) -> client, kept for the next call
_remote_clients: dict[tuple[str, float], Client] = {}
_remote_lock = threading.Lock()


def notify_remote(url: str, channels: str | type | Iterable[str | type],
                  trigger: object = None, *, prefix: str | None = None,
                  timeout: float | None = None) -> int:
    """Notify *channels* on every sbio process sharing the Redis at *url*.

    For programs that are not sbio servers (cron jobs, workers, scripts):
    the subscriptions of those channels re-run in every process of the
    cluster, exactly as after :func:`sbio.notify`. Needs neither gevent nor
    a running server; the connection is kept for the next call.

    :param url: the cluster's ``server.message_queue``.
    :param channels: a channel name or model class, or an iterable of them.
    :param trigger: pushed with the updates (``"manual"`` by default).
    :param prefix: the cluster's ``[cluster] prefix`` (its default if None).
    :param timeout: seconds the Redis command may take (``[cluster] socket_timeout``
        by default).
    :return: how many sbio processes received it (0: none was listening).
    :raises redis.exceptions.ConnectionError: Redis is unreachable (nothing
        is sent; retrying is up to the caller).
    """
    names = channel_names(channels)
    if not names:
        return 0
    prefix = setting(prefix, "prefix")
    timeout = setting(timeout, "socket_timeout")
    key = (url, timeout)
    with _remote_lock:
        client = _remote_clients.get(key)
        if client is None:
            client = _remote_clients[key] = make_client(url, timeout)
    message = encode_bus_message("remote:" + uuid.uuid4().hex, names,
                                 MANUAL_TRIGGER if trigger is None else str(trigger))
    receivers: int = client.publish(f"{prefix}:live", message)
    return receivers
