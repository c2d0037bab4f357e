"""The sbio exception tree, rooted at :class:`SbioError`.

Handlers raise :class:`RpcError` to answer a call with an application error
code, and :class:`ConnectionRefused` from ``on_connect`` to refuse a
connection with a message and a payload the client receives.
"""

__all__ = ["SbioError", "RpcError", "ConnectionRefused", "SbioTimeoutError"]


class SbioError(Exception):
    """Base class of every exception sbio raises on purpose."""


class RpcError(SbioError):
    """An error a handler reports to its caller.

    Raised in an ``on_*`` handler, it answers the call with
    ``{"ok": false, "error": {"code": code, "message": message}}``.

    :param code: a short machine-readable string, e.g. ``"bad_credentials"``.
    :param message: a human-readable explanation sent to the client.
    """

    def __init__(self, code, message=""):
        if not isinstance(code, str) or not code:
            raise TypeError("RpcError code must be a non-empty string")
        super().__init__(code, message)
        self.code = code
        self.message = str(message)

    def to_dict(self):
        """The ``error`` object of the wire envelope."""
        return {"code": self.code, "message": self.message}

    def __str__(self):
        return f"{self.code}: {self.message}" if self.message else self.code


class ConnectionRefused(SbioError):
    """Raised by ``Namespace.on_connect`` to refuse a connection.

    The client receives a socket.io CONNECT_ERROR whose ``message`` is
    *message* and whose ``data`` is *data* (any JSON-able value).
    """

    def __init__(self, message="Connection refused", data=None):
        super().__init__(message, data)
        self.message = str(message)
        self.data = data

    def __str__(self):
        return self.message


class SbioTimeoutError(SbioError, TimeoutError):
    """A wait that sbio bounds ran out of time (e.g. ``Namespace.call``)."""
