"""Health checks: ``/healthz`` (the process answers) and ``/readyz`` (it should get traffic)."""
from __future__ import annotations

from typing import Any

__all__ = ["readiness", "redis_up"]


def redis_up(cluster: Any) -> bool:
    """True while *cluster*'s client manager and bus are both subscribed to Redis."""
    return bool(cluster.client_manager.connected_event.is_set()
                and cluster.bus.connected_event.is_set())


def readiness(server: Any) -> tuple[bool, str]:
    """``(ready, reason)`` of *server*: whether a load balancer should send it traffic.

    Ready when the server has started, its lifecycle runs (startup hooks
    done, tasks started), it is not stopping, and, with
    ``server.message_queue``, it is subscribed to Redis. *reason* says what
    is missing (``"ready"`` when nothing is).
    """
    if server.stopping:
        return False, "stopping: the server is shutting down"
    if not server.started:
        return False, "not started"
    lifecycle = server.lifecycle
    if not lifecycle.running:
        return False, f"lifecycle {lifecycle.state}: startup hooks and tasks are not running"
    cluster = getattr(server, "cluster", None)
    if cluster is not None and not redis_up(cluster):
        from ..cluster import redact

        return False, f"Redis {redact(cluster.url)} unreachable (server.message_queue)"
    return True, "ready"
