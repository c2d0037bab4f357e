"""Channels of decorated handlers, ``@subscribes`` / ``@notifies`` / ``notify()``, and the
servers a notification reaches (:func:`running_servers`).
"""
import functools
import inspect
import logging
import re
import string
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from gevent import monkey

from ..channels import channel_names as _channel_names
from ..context import current_call
from ..tasks import Lifecycle, current_lifecycle
from .bus import Bus

log = logging.getLogger("sbio.live")  # one logger for the package, as before the split

#: Trigger of notifications sent outside any handler without a trigger.
MANUAL_TRIGGER = "manual"

# -- channels (naming: sbio.channels) ----------------------------------------------------

_FORMATTER = string.Formatter()
_FIELD_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., Any])

#: What names a channel: a string, or a model class (its table name).
Channel = str | type


class _HasBus(Protocol):
    @property
    def bus(self) -> Bus: ...


class _Server(Protocol):
    """What a notification needs of a :class:`sbio.Server` (which imports this package,
    so it cannot be named here)."""

    @property
    def lifecycle(self) -> Lifecycle: ...
    @property
    def live(self) -> _HasBus: ...


class _Channels:
    """The channels of one decorated function: plain names and ``{arg}`` templates.

    Templates are formatted with the function's bound arguments (defaults
    applied); the signature is computed once, when decorating.
    """

    __slots__ = ("names", "has_templates", "signature")

    def __init__(self, func: Callable[..., Any], channels: Sequence[Channel],
                 decorator: str) -> None:
        self.names = _channel_names(channels)
        self.signature = inspect.signature(func)
        params = self.signature.parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.has_templates = False
        for name in self.names:
            for _, field, _, _ in _FORMATTER.parse(name):
                if field is None:
                    continue
                self.has_templates = True
                root = _FIELD_ROOT.match(field)
                if root is None:
                    raise ValueError(
                        f"@{decorator}({name!r}) on {func.__qualname__}: channel templates "
                        "name the handler's arguments, e.g. 'room:{room}'")
                if root.group() not in params and not takes_kwargs:
                    raise ValueError(
                        f"@{decorator}({name!r}) on {func.__qualname__}: "
                        f"{func.__qualname__} has no argument {root.group()!r} "
                        f"(arguments: {', '.join(params)})")

    def format(self, args: Sequence[Any],
               kwargs: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The concrete channel names for one call ``func(*args, **kwargs)``."""
        if not self.has_templates:
            return self.names
        bound = self.signature.bind(*args, **(kwargs or {}))
        bound.apply_defaults()
        values = bound.arguments
        return tuple(dict.fromkeys(name.format_map(values) for name in self.names))


# -- decorators and notify() ------------------------------------------------------------


def subscribes(*channels: Channel, shared: bool = False) -> Callable[[_F], _F]:
    """Mark an ``on_*`` handler as subscribable, re-run when *channels* are notified.

    :param channels: channel names, model classes (their table name), or
        templates formatted with the handler's arguments (``"room:{room}"``,
        so only the subscriptions of that room re-run).
    :param shared: the result depends only on the arguments, not on the
        connection: each distinct argument list is computed once per
        broadcast cycle and the encoded result is sent to every subscriber
        (each subscriber's ACL is still checked).
    """
    if len(channels) == 1 and inspect.isfunction(channels[0]):
        raise TypeError("use @subscribes(...) with parentheses and the channel names, "
                        "e.g. @subscribes('cards')")

    def decorate(func: _F) -> _F:
        spec = _SubscribeSpec(_Channels(func, channels, "subscribes"), bool(shared))
        marked: Any = func  # a function takes attributes; Callable does not say so
        marked._sbio_subscribes = spec
        return func

    return decorate


class _SubscribeSpec:
    __slots__ = ("channels", "shared")

    def __init__(self, channels: _Channels, shared: bool) -> None:
        self.channels = channels
        self.shared = shared


def _trigger_of(func: Callable[..., Any]) -> str:
    marks = getattr(func, "_sbio_events", None)  # @sbio.event("add card"): "add card"
    if marks:
        return marks[0][0]
    name = func.__name__
    return name[3:] if name.startswith("on_") else name


def notifies(*channels: Channel) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Notify *channels* after the decorated function returns normally.

    Inside a handler the notification is sent once the handler has returned
    normally (it is dropped when the handler raises); outside a handler it
    is sent when the function returns. Templates (``"room:{room}"``) are
    formatted with the function's arguments. The trigger is the event name
    (``on_add_card`` -> ``"add_card"``; ``@sbio.event("add card")`` -> ``"add card"``).
    """
    if len(channels) == 1 and inspect.isfunction(channels[0]):
        raise TypeError("use @notifies(...) with parentheses and the channel names, "
                        "e.g. @notifies('cards')")

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        spec = _Channels(func, channels, "notifies")
        trigger: str | None = None

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            nonlocal trigger
            result = func(*args, **kwargs)
            names = spec.format(args, kwargs)
            if names:
                if trigger is None:  # known once @sbio.event (above or below) has marked it
                    trigger = _trigger_of(wrapper)
                _notify_names(names, True, trigger)
            return result

        return wrapper

    return decorate


def notify(channels: Channel | Iterable[Channel], delay: bool = False,
           trigger: object = None) -> None:
    """Tell every subscription of *channels* to re-run (in every namespace and process).

    Which servers of this process it reaches (each publishes on its own bus,
    so with a cluster the other processes of that cluster get it too):

    * in a handler, or a re-run: the server of the current call;
    * in a :class:`~sbio.DaemonTask`, a Caller or a startup/shutdown hook:
      the running server(s) whose lifecycle runs it;
    * anywhere else (a plain greenlet, an OS thread, a script), or from a
      lifecycle no running server uses: every running server of the process.

    Safe from any greenlet and from any OS thread.

    :param channels: a channel name or model class, or an iterable of them.
    :param delay: inside a handler, wait until the handler has returned
        normally (dropped if it raises); outside a handler it changes nothing.
    :param trigger: a string pushed with the updates (``"trigger"``); by
        default the current handler's event name, or ``"manual"``.
    """
    names = _channel_names(channels)
    if names:
        _notify_names(names, delay, None if trigger is None else str(trigger))


def _notify_names(names: tuple[str, ...], delay: bool, trigger: str | None) -> None:
    ctx = current_call()
    if ctx is not None:
        if ctx.purpose == "rerun":
            log.debug("notification of %s raised while re-running %r dropped "
                      "(re-runs never notify)", names, ctx.event)
            return
        if trigger is None:
            trigger = ctx.event
        servers: Sequence[_Server] = (ctx.namespace.server,)
        if delay:
            ctx.after_success.append(functools.partial(_publish, servers, names, trigger))
            return
    else:
        servers = _context_servers()
    _publish(servers, names, MANUAL_TRIGGER if trigger is None else trigger)


def _context_servers() -> list[_Server]:
    """The servers a notification made outside any handler call reaches."""
    servers = running_servers()
    lifecycle = current_lifecycle()
    if lifecycle is not None:
        own = [server for server in servers if server.lifecycle is lifecycle]
        if own:
            return own
    return servers


def _publish(servers: Iterable[_Server], names: tuple[str, ...], trigger: str) -> None:
    # Buses with the same reach key (one Redis channel) reach each other's
    # subscribers: publish once per key, or a server would get it twice.
    reached: set[object] = set()
    for server in servers:
        bus = server.live.bus
        key = bus.reach_key
        if key not in reached:
            reached.add(key)
            bus.publish(names, trigger)


# -- the running servers ----------------------------------------------------------------

# Weak references to the servers whose live data is open (started, or an
# in-process test server with subscriptions): the servers a notification made
# outside any handler or task reaches. A tuple replaced under the lock, never
# mutated, so notify() reads it from any thread without locking.
_running: tuple[weakref.ReferenceType[Any], ...] = ()
_running_lock = monkey.get_original("_thread", "allocate_lock")()


def running_servers() -> list[Any]:
    """The servers of this process that :func:`notify` reaches from outside any context.

    A server is in it from :meth:`sbio.Server.start` to :meth:`~sbio.Server.stop`
    (an in-process test server from its first subscription to its ``stop()``).
    Held weakly: a server dropped without ``stop()`` leaves it when collected.
    The items are :class:`sbio.Server` objects (typed ``Any``: sbio.server
    imports this module).
    """
    return [server for server in (ref() for ref in _running) if server is not None]


def _set_running(server: _Server, running: bool) -> None:
    global _running
    with _running_lock:
        refs = [ref for ref in _running if ref() is not None and ref() is not server]
        if running:
            refs.append(weakref.ref(server))
        _running = tuple(refs)
