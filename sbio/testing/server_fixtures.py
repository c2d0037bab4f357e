"""Fixtures of servers and clients: ``sbio_config``, ``sbio_client``, ``sbio_server``,
``sbio_live_client``.
"""
import pytest

from .live_client import LiveClient
from .local_client import LocalClient, _ErrorCapture


@pytest.fixture
def sbio_config():
    """sbio's configuration for the test servers: defaults, 127.0.0.1, a free port."""
    from ..config import load_sbio_config

    return load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                       "server.secret_key": "sbio-tests"})


@pytest.fixture
def sbio_client(sbio_config):
    """Factory: ``sbio_client(NamespaceClass, auth=None, **kw) -> LocalClient``.

    Every client of one test shares one in-process server hosting the
    classes asked for, so broadcasts between them work. Clients still
    connected are disconnected after the test.
    """
    from ..server import Server

    state = {"server": None, "clients": []}

    def make(cls, auth=None, **kwargs):
        server = state["server"]
        if server is None:
            server = state["server"] = Server(config=sbio_config)
        if cls.name not in server.namespaces:
            dispatcher = server.add_namespace(cls)
            _ErrorCapture.of(server).attach(dispatcher)
        client = LocalClient(server, cls.name, auth=auth, **kwargs)
        state["clients"].append(client)
        return client

    yield make
    for client in state["clients"]:
        client.disconnect()
    if state["server"] is not None:
        state["server"].stop(timeout=5)


@pytest.fixture
def sbio_server(sbio_config):
    """Factory: ``sbio_server(*namespace_classes, app=None) -> started sbio.Server``.

    The server listens on a free loopback port (``server.url``) and is
    stopped after the test.
    """
    from ..server import Server

    servers = []

    def make(*namespaces, app=None, config=None):
        server = Server(namespaces, config=config or sbio_config, app=app)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=5)


@pytest.fixture
def sbio_live_client():
    """Factory: ``sbio_live_client(server, "/ns", auth=None, transports=("websocket",))``.

    Returns a connected :class:`LiveClient`; disconnected after the test.
    """
    clients = []

    def make(server, namespace, **kwargs):
        url = server if isinstance(server, str) else server.url
        client = LiveClient(url, namespace, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
