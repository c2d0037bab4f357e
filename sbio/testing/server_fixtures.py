"""Fixtures of servers and clients: ``sbio_config``, ``sbio_client``, ``sbio_server``,
``sbio_live_client``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest

from ._plugin import require_monkey_patched
from .live_client import LiveClient
from .local_client import LocalClient, _ErrorCapture

if TYPE_CHECKING:
    from flask import Flask

    from ..config import Config
    from ..namespace import Namespace
    from ..server import Server

__all__ = ["sbio_config", "sbio_client", "sbio_server", "sbio_live_client",
           "ClientFactory", "ServerFactory", "LiveClientFactory"]

#: ``sbio_client(NamespaceClass, auth=None, **options) -> LocalClient``
ClientFactory = Callable[..., LocalClient]
#: ``sbio_server(*namespace_classes, app=None, config=None) -> Server`` (started)
ServerFactory = Callable[..., "Server"]
#: ``sbio_live_client(server_or_url, namespace, **options) -> LiveClient``
LiveClientFactory = Callable[..., LiveClient]


@pytest.fixture
def sbio_config() -> Config:
    """sbio's configuration for the test servers: defaults, 127.0.0.1, a free port."""
    from ..config import load_sbio_config

    return load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                       "server.secret_key": "sbio-tests"})


@pytest.fixture
def sbio_client(sbio_config: Config) -> Iterator[ClientFactory]:
    """Factory: ``sbio_client(NamespaceClass, auth=None, **kw) -> LocalClient``.

    Every client of one test shares one in-process server hosting the
    classes asked for, so broadcasts between them work. Clients still
    connected are disconnected after the test. Works without
    monkey-patching (nothing blocks on a socket).
    """
    from ..server import Server

    server: Server | None = None
    clients: list[LocalClient] = []

    def make(cls: type[Namespace], auth: Any = None, **kwargs: Any) -> LocalClient:
        nonlocal server
        if server is None:
            server = Server(config=sbio_config)
        if cls.name not in server.namespaces:
            dispatcher = server.add_namespace(cls)
            _ErrorCapture.of(server).attach(dispatcher)
        # add_namespace refused a class without a name
        client = LocalClient(server, cast(str, cls.name), auth=auth, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
    if server is not None:
        server.stop(timeout=5)


@pytest.fixture
def sbio_server(sbio_config: Config) -> Iterator[ServerFactory]:
    """Factory: ``sbio_server(*namespace_classes, app=None) -> started sbio.Server``.

    The server listens on a free loopback port (``server.url``) and is
    stopped after the test. Needs the process monkey-patched (the plugin's
    default): a blocking client in the test's thread would stall it.
    """
    require_monkey_patched("sbio_server")
    from ..server import Server

    servers: list[Server] = []

    def make(*namespaces: type[Namespace], app: Flask | None = None,
             config: Config | None = None) -> Server:
        server = Server(namespaces, config=config or sbio_config, app=app)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=5)


@pytest.fixture
def sbio_live_client() -> Iterator[LiveClientFactory]:
    """Factory: ``sbio_live_client(server, "/ns", auth=None, transports=("websocket",))``.

    Returns a connected :class:`LiveClient`; disconnected after the test.
    Needs the process monkey-patched, as :func:`sbio_server`.
    """
    require_monkey_patched("sbio_live_client")
    clients: list[LiveClient] = []

    def make(server: Server | str, namespace: str, **kwargs: Any) -> LiveClient:
        url = server if isinstance(server, str) else server.url
        client = LiveClient(url, namespace, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()


