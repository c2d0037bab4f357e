"""The live client: :class:`LiveClient`, an :class:`sbio.Client` over a real socket."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..errors import RpcError
from .clients import CallError, _ClientBase

__all__ = ["LiveClient"]


class LiveClient(_ClientBase):
    """A test client connected to a running server over a real socket.

    A thin layer over :class:`sbio.Client` (``reconnect=False``): the client
    does the connecting, the calls and the server-to-client answers; this
    layer keeps the events log and the subscriptions that both test clients
    share.

    :param url: the server's URL (``server.url``).
    :param namespace: the namespace to connect to.
    :param transports: ``["websocket"]`` (default), ``["polling"]``, or both.
    """

    def __init__(self, url: str, namespace: str, auth: Any = None,
                 transports: Iterable[str] = ("websocket",), timeout: float = 5,
                 headers: dict[str, str] | None = None) -> None:
        from ..client import Client

        super().__init__(namespace, timeout)

        def record(event: str, *args: Any) -> None:
            self._record(event, args)

        def disconnected(reason: Any = None) -> None:
            self._record("disconnect", [reason])

        # registered before the connection opens: what on_connect emits is recorded too
        handlers: dict[str, Callable[..., Any]] = {"*": record, "disconnect": disconnected}
        #: the underlying :class:`sbio.Client`
        self.client = Client(url, namespace, auth=auth, transports=list(transports),
                             timeout=timeout, headers=headers, reconnect=False,
                             handlers=handlers)

    @property
    def sid(self) -> str | None:
        return self.client.sid

    @property
    def connected(self) -> bool:
        return self.client.connected

    def _call(self, event: str, args: Any, timeout: float | None
              ) -> tuple[Any, BaseException | None]:
        timeout = self.timeout if timeout is None else timeout
        try:
            return self.client._call_envelope(event, args, timeout), None
        except RpcError as exc:
            if exc.code == "timeout":  # a CallTimeout: also a SbioTimeoutError
                raise
            raise CallError(exc.code, exc.message) from None

    def _call_raw(self, event: str, args: Any, timeout: float | None) -> list[Any]:
        timeout = self.timeout if timeout is None else timeout
        try:
            return self.client._call_ack_args(event, args, timeout)
        except RpcError as exc:
            if exc.code == "timeout":
                raise
            raise CallError(exc.code, exc.message) from None

    def emit(self, event: str, *args: Any) -> None:
        """Emit *event* without an ack."""
        self.client.emit(event, *args)

    def on(self, event: str, fn: Callable[..., Any]) -> None:
        """Answer the server's ``self.call(event, ...)`` with ``fn(*args)``.

        See :meth:`sbio.Client.on`: a tuple answers with several values.
        """
        self.client.on(event, fn)

    def disconnect(self) -> None:
        """Disconnect. Idempotent."""
        self.client.close()

    def __repr__(self) -> str:
        return f"<LiveClient {self.namespace}>"
