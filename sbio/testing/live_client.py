"""The live client: :class:`LiveClient`, python-socketio's client over a real socket."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ConnectionRefused, SbioTimeoutError
from .clients import _ClientBase

__all__ = ["LiveClient"]


class LiveClient(_ClientBase):
    """A python-socketio client connected to a running server over a real socket.

    :param url: the server's URL (``server.url``).
    :param namespace: the namespace to connect to.
    :param transports: ``["websocket"]`` (default), ``["polling"]``, or both.
    """

    def __init__(self, url: str, namespace: str, auth: Any = None,
                 transports: Iterable[str] = ("websocket",), timeout: float = 5,
                 headers: dict[str, str] | None = None) -> None:
        import socketio

        super().__init__(namespace, timeout)
        self.client = socketio.Client(reconnection=False)
        self._refusal: dict[str, Any] | None = None

        def on_any(event: str, *args: Any) -> None:
            self._record(event, args)

        def on_connect_error(data: Any = None) -> None:
            self._refusal = data if isinstance(data, dict) else {"message": str(data)}

        def on_disconnect(reason: Any = None) -> None:
            self._record("disconnect", [reason])

        self.client.on("*", on_any, namespace=namespace)
        self.client.on("connect_error", on_connect_error, namespace=namespace)
        self.client.on("disconnect", on_disconnect, namespace=namespace)
        try:
            self.client.connect(url, namespaces=[namespace], auth=auth,
                                transports=list(transports), headers=headers or {},
                                wait_timeout=timeout)
        except Exception as exc:
            # abort: a polling transport would otherwise wait out its long-poll
            self.client.eio.disconnect(abort=True)
            if self._refusal is not None:
                raise ConnectionRefused(self._refusal.get("message", "Connection refused"),
                                        self._refusal.get("data")) from None
            raise ConnectionError(f"cannot connect to {url}{namespace}: {exc}") from exc

    @property
    def sid(self) -> str | None:
        return self.client.get_sid(self.namespace)

    @property
    def connected(self) -> bool:
        return self.client.connected and self.namespace in self.client.namespaces

    def _call(self, event: str, args: Any, timeout: float | None
              ) -> tuple[Any, BaseException | None]:
        import socketio

        timeout = self.timeout if timeout is None else timeout
        try:
            return self.client.call(event, tuple(args), namespace=self.namespace,
                                    timeout=timeout), None
        except socketio.exceptions.TimeoutError:
            raise SbioTimeoutError(f"no ack for {event!r} within {timeout}s") from None

    def _call_raw(self, event: str, args: Any, timeout: float | None) -> list[Any]:
        import gevent.event

        timeout = self.timeout if timeout is None else timeout
        answer: gevent.event.AsyncResult[list[Any]] = gevent.event.AsyncResult()
        self.client.emit(event, tuple(args), namespace=self.namespace,
                         callback=lambda *data: answer.set(list(data)))
        try:
            return answer.get(timeout=timeout) or []
        except gevent.Timeout:
            raise SbioTimeoutError(f"no ack for {event!r} within {timeout}s") from None

    def emit(self, event: str, *args: Any) -> None:
        """Emit *event* without an ack."""
        self.client.emit(event, tuple(args), namespace=self.namespace)

    def disconnect(self) -> None:
        """Disconnect. Idempotent."""
        self.client.disconnect()

    def __repr__(self) -> str:
        return f"<LiveClient {self.namespace}>"
