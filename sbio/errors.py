"""The sbio exception tree, rooted at :class:`SbioError`.

Handlers raise :class:`RpcError` to answer a call with an application error
code, and :class:`ConnectionRefused` from ``on_connect`` to refuse a
connection with a message and a payload the client receives.
:class:`sbio.Client` raises the same classes on the other side: an error
answer as :class:`RpcError` (a timeout as :class:`CallTimeout`), a refusal as
:class:`ConnectionRefused`, an unreachable server as :class:`ConnectionFailed`.

::

    SbioError
    ├── RpcError                  (sbio.sa.ValidationError, sbio.testing.CallError)
    │   └── CallTimeout           also a SbioTimeoutError (so a TimeoutError): code "timeout"
    ├── ConnectionRefused
    ├── ConnectionFailed          also a ConnectionError
    ├── SbioTimeoutError          also a TimeoutError
    ├── ConfigurationError        also a ValueError
    ├── LifecycleError
    ├── QueueFull                 also a queue.Full
    ├── NamespaceLoadError
    ├── BadJSON                   also a ValueError
    └── PatchError                also a ValueError

The old import locations (``sbio.config.ConfigurationError``,
``sbio.tasks.LifecycleError``, ``sbio.tasks.QueueFull``,
``sbio.cli.NamespaceLoadError``) still work.
"""

import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

__all__ = ["SbioError", "RpcError", "CallTimeout", "ConnectionRefused", "ConnectionFailed",
           "SbioTimeoutError",
           "ConfigurationError", "LifecycleError", "QueueFull", "NamespaceLoadError", "BadJSON",
           "PatchError"]


class SbioError(Exception):
    """Base class of every exception sbio raises on purpose."""


class RpcError(SbioError):
    """An error a handler reports to its caller.

    Raised in an ``on_*`` handler, it answers the call with
    ``{"ok": false, "error": {"code": code, "message": message}}``.

    :param code: a short machine-readable string, e.g. ``"bad_credentials"``.
    :param message: a human-readable explanation sent to the client.
    """

    def __init__(self, code: str, message: object = "") -> None:
        if not isinstance(code, str) or not code:
            raise TypeError("RpcError code must be a non-empty string")
        super().__init__(code, message)
        self.code = code
        self.message = str(message)

    def to_dict(self) -> dict[str, str]:
        """The ``error`` object of the wire envelope."""
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


class ConnectionRefused(SbioError):
    """Raised by ``Namespace.on_connect`` to refuse a connection.

    The client receives a socket.io CONNECT_ERROR whose ``message`` is
    *message* and whose ``data`` is *data* (any JSON-able value).
    """

    def __init__(self, message: object = "Connection refused", data: Any = None) -> None:
        super().__init__(message, data)
        self.message = str(message)
        self.data = data

    def __str__(self) -> str:
        return self.message


class SbioTimeoutError(SbioError, TimeoutError):
    """A wait that sbio bounds ran out of time (e.g. ``Namespace.call``)."""


class CallTimeout(RpcError, SbioTimeoutError):
    """A call got no answer in time, or the server answered it with code ``timeout``.

    An :class:`RpcError` with ``code == "timeout"``, and also a
    :class:`SbioTimeoutError` (so a :class:`TimeoutError`): catch it as any
    of the three. :class:`sbio.Client` raises it when a call, a subscription's
    first result or the connection it waits for does not come within the
    timeout, and for a ``timeout`` error envelope (a bound of the server ran
    out), so that one ``except`` covers both.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__("timeout", message)


class ConnectionFailed(SbioError, ConnectionError):
    """:class:`sbio.Client` could not reach the server, or the handshake failed.

    Not a refusal (that is :class:`ConnectionRefused`, with the server's
    message): the server is down, the URL is wrong, or no answer came within
    the client's timeout. Also a :class:`ConnectionError`.
    """


class ConfigurationError(SbioError, ValueError):
    """The configuration cannot be read or does not validate.

    The message lists every problem, one per line, as ``section.key: problem``
    (with where the value came from), or names the file and line of a syntax
    error. :attr:`errors` holds the same problems as ``(where, problem)`` pairs,
    *where* being a dotted key or ``"<file>, line <n>"``.
    """

    def __init__(self, message: str, errors: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


class LifecycleError(SbioError):
    """Start-up failed, or the lifecycle was used in a way it cannot honour.

    When a startup hook raises, :meth:`sbio.tasks.Lifecycle.start` raises this
    error with the hook's exception chained (``__cause__``).

    :ivar hook: qualified name of the startup hook that failed (or ``None``).
    :ivar shutdown_errors: ``(hook name, exception)`` pairs for the shutdown
        hooks that also failed while start-up was being rolled back.
    """

    def __init__(self, message: str, hook: str | None = None,
                 shutdown_errors: Iterable[tuple[str, BaseException]] = ()) -> None:
        super().__init__(message)
        self.hook = hook
        self.shutdown_errors = list(shutdown_errors)


class QueueFull(SbioError, _stdlib_queue.Full):
    """:meth:`sbio.tasks.Caller.defer` was called while the caller's queue was full.

    Also a :class:`queue.Full`, so code written for the standard library's
    queues catches it.
    """


class NamespaceLoadError(SbioError):
    """A namespace module could not be imported; the message names the file."""


class BadJSON(SbioError, ValueError):
    """An inbound payload sbio refuses (:class:`sbio.limits.StrictJSON`): NaN/Infinity,
    a number out of range, or nesting deeper than ``server.max_json_depth``.
    The event is answered ``bad_request``.
    """


class PatchError(SbioError, ValueError):
    """A JSON Patch that does not apply to the value (:func:`sbio.live.patch.apply_patch`):
    a malformed operation, a path that does not exist, or a failed ``test``.
    """
