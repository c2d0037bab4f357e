"""Every sbio server serves the browser client at /sbio/ (sbio/client_assets.py).

Here from a checkout (the files come from static/); tests/test_packaging_wheel.py
checks the same from an installed wheel (package data).
"""
import os

import pytest
import requests
from flask import Flask

from sbio.config import load_sbio_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(REPO, "static", "node_modules", "socket.io-client", "dist")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def own_static_config(tmp_path):
    """A project whose static_dir is its own (no sbio.js in it)."""
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "app.js").write_text("// the project's own file\n")
    return load_sbio_config(overrides={"server.host": "127.0.0.1", "server.port": 0,
                                       "server.secret_key": "t",
                                       "server.static_dir": str(tmp_path / "static")})


def test_default_app_serves_the_client_whatever_static_dir(sbio_server, own_static_config,
                                                           static_node_modules):
    server = sbio_server(config=own_static_config)
    r = requests.get(server.url + "/sbio/sbio.js", timeout=10)
    assert r.status_code == 200
    assert r.content == _read(os.path.join(REPO, "static", "sbio.js"))
    assert r.headers["Content-Type"].startswith("text/javascript")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["ETag"] and r.headers["Last-Modified"]
    again = requests.get(server.url + "/sbio/sbio.js", timeout=10,
                         headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""

    r = requests.get(server.url + "/sbio/socket.io.min.js", timeout=10)
    assert r.status_code == 200
    assert r.content == _read(os.path.join(DIST, "socket.io.min.js"))
    r = requests.get(server.url + "/sbio/socket.io.min.js.map", timeout=10)
    assert r.status_code == 200 and r.json()["version"] == 3
    # the project's own static files are still its own
    assert requests.get(server.url + "/static/app.js", timeout=10).text.startswith("// the project")


def test_a_users_own_flask_app_gets_the_client(sbio_server, static_node_modules):
    app = Flask("users_app")

    @app.route("/")
    def index():
        return "mine"

    server = sbio_server(app=app)
    assert requests.get(server.url + "/", timeout=10).text == "mine"
    r = requests.get(server.url + "/sbio/sbio.js", timeout=10)
    assert r.status_code == 200 and b"sbio.connect" in r.content
    assert requests.get(server.url + "/sbio/socket.io.min.js", timeout=10).status_code == 200


def test_only_the_client_files_are_served(sbio_server, static_node_modules):
    server = sbio_server()
    for path in ["/sbio/", "/sbio/package.json", "/sbio/socket.io.js", "/sbio/..%2Fsetup.py",
                 "/sbio/_client", "/sbio/sbio.js/x"]:
        assert requests.get(server.url + path, timeout=10).status_code == 404, path


def test_two_servers_on_one_app(sbio_server, static_node_modules):
    app = Flask("shared")
    first, second = sbio_server(app=app), sbio_server(app=app)
    for server in (first, second):
        assert requests.get(server.url + "/sbio/sbio.js", timeout=10).status_code == 200
