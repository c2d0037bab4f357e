"""The module-level :data:`lifecycle`, where module-level declarations go: its
registration functions :func:`on_startup` / :func:`on_shutdown` and its :data:`stopped` event.
"""
from collections.abc import Callable
from typing import overload

from gevent.event import Event

from ._lifecycle import _H, DEFAULT_PRIORITY, Lifecycle

#: The module-level lifecycle: the application's declarations. The
#: registration functions below and every task and caller use it by default;
#: a Server made without ``lifecycle=`` starts it (unless it runs already) and
#: stops it only if that server was the one that started it.
lifecycle = Lifecycle()

#: Set while the server is not running (cleared on start, set when stop begins).
#: Long-running code checks it: ``while not stopped.is_set(): ...``, or waits on
#: it: ``stopped.wait(60)`` returns early when the server stops.
stopped: Event = lifecycle.stopped


def _default_lifecycle() -> Lifecycle:
    return lifecycle


@overload
def on_startup(func: _H, priority: float = DEFAULT_PRIORITY) -> _H: ...
@overload
def on_startup(func: None = None, priority: float = DEFAULT_PRIORITY) -> Callable[[_H], _H]: ...
def on_startup(func: _H | None = None,
               priority: float = DEFAULT_PRIORITY) -> _H | Callable[[_H], _H]:
    """Register *func* to run when the server starts (see :meth:`Lifecycle.on_startup`).

    ::

        @on_startup(priority=40)
        def warm_cache(): ...
    """
    return lifecycle.on_startup(func, priority)


@overload
def on_shutdown(func: _H, priority: float = DEFAULT_PRIORITY) -> _H: ...
@overload
def on_shutdown(func: None = None, priority: float = DEFAULT_PRIORITY) -> Callable[[_H], _H]: ...
def on_shutdown(func: _H | None = None,
                priority: float = DEFAULT_PRIORITY) -> _H | Callable[[_H], _H]:
    """Register *func* to run when the server stops (see :meth:`Lifecycle.on_shutdown`)."""
    return lifecycle.on_shutdown(func, priority)
