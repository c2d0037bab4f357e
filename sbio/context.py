"""The handler call in progress: :class:`CallContext` and :func:`current_call`.

A module of its own so that the dispatcher (which sets it) and everything
that reads it (Namespace, live data) import it without importing each other.
"""
import contextvars
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CallContext", "current_call"]


class CallContext:
    """The handler call in progress in this greenlet (see :func:`current_call`).

    ``after_success`` holds callables run once the handler has returned
    normally (``@notifies``, ``notify(delay=True)``); they are dropped when
    it raised. ``subscription`` is the :class:`sbio.live.Subscription` being
    computed when ``purpose`` is ``"subscribe"`` or ``"rerun"``, else None.
    """

    __slots__ = ("namespace", "event", "args", "after_success", "finished", "purpose",
                 "subscription")

    def __init__(self, namespace: Any, event: str, args: Sequence[Any], purpose: str = "call",
                 subscription: Any = None) -> None:
        self.namespace = namespace
        self.event = event
        self.args = args
        self.after_success: list[Callable[[], object]] = []
        self.finished = False
        #: "call" for a client call, "subscribe" / "rerun" for live data.
        self.purpose = purpose
        self.subscription = subscription


_current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "sbio_current_call", default=None)


def current_call() -> CallContext | None:
    """The :class:`CallContext` of the handler running in this greenlet, or None."""
    ctx = _current_call.get()
    if ctx is not None and ctx.finished:
        return None
    return ctx
