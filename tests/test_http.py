"""HTTP answers of a real server: security headers, the session cookie, what /static serves."""
import os
import re
import socket

import pytest
import requests
from flask import Blueprint, Flask, session

from sbio.config import load_sbio_config
from sbio.server import Server
from sbio.tasks import lifecycle

with lifecycle.isolated():
    from board import BoardNamespace
    from board import blueprint as board_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC_DIR = os.path.join(REPO, "static")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
}


def config(**server):
    overrides = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "http-tests",
                 "server.static_dir": STATIC_DIR}
    overrides.update({f"server.{key}": value for key, value in server.items()})
    return load_sbio_config(overrides=overrides)


@pytest.fixture
def serve():
    servers = []

    def make(*namespaces, **kwargs):
        kwargs.setdefault("config", config())
        server = Server(namespaces, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=5)


pages = Blueprint("pages", __name__, url_prefix="/pages")


@pages.route("/remember")
def remember():
    session["seen"] = True
    return "remembered"


@pages.route("/framed")
def framed():
    return "embed me", 200, {"X-Frame-Options": "SAMEORIGIN",
                             "Content-Security-Policy": "frame-ancestors 'self'"}


def get(server, path, **kwargs):
    return requests.get(server.url + path, timeout=5, allow_redirects=False, **kwargs)


def security_headers(response):
    return {name: response.headers.get(name) for name in SECURITY_HEADERS}


# -- security headers ----------------------------------------------------------------


def test_every_answer_of_the_default_app_has_the_security_headers(serve, static_node_modules):
    server = serve(BoardNamespace, blueprints=[board_pages])
    answers = {
        "index": get(server, "/"),
        "blueprint page": get(server, "/board/"),
        "static file": get(server, "/static/sbio.js"),
        "browser bundle": get(server,
                              "/static/node_modules/socket.io-client/dist/socket.io.min.js"),
        "404": get(server, "/nope"),
        "static 404": get(server, "/static/package.json"),
        "Engine.IO handshake": get(server, "/socket.io/?EIO=4&transport=polling"),
        "Engine.IO error": get(server, "/socket.io/?EIO=4&transport=polling&sid=nope"),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        "index": 200, "blueprint page": 200, "static file": 200, "browser bundle": 200,
        "404": 404, "static 404": 404, "Engine.IO handshake": 200, "Engine.IO error": 400}
    for name, response in answers.items():
        assert security_headers(response) == SECURITY_HEADERS, name


def test_an_answer_that_sets_its_own_frame_policy_keeps_it(serve):
    server = serve(blueprints=[pages])
    response = get(server, "/pages/framed")
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_an_own_flask_app_gets_the_headers_too(serve):
    app = Flask("own")

    @app.route("/")
    def index():
        return "mine"

    server = serve(app=app)
    for path in ["/", "/missing"]:
        assert security_headers(get(server, path)) == SECURITY_HEADERS, path


def test_security_headers_can_be_turned_off(serve):
    server = serve(config=config(security_headers=False))
    assert security_headers(get(server, "/")) == dict.fromkeys(SECURITY_HEADERS)


def test_the_session_cookie_is_samesite_lax_and_httponly(serve):
    server = serve(blueprints=[pages])
    response = get(server, "/pages/remember")
    assert response.text == "remembered"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("session=")
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie


# -- what /static serves ------------------------------------------------------------------

REFUSED = [
    "package.json",
    "package-lock.json",
    "node_modules/socket.io-client/package.json",
    "node_modules/socket.io-client/dist/socket.io.js",          # not a bundle pages load
    "node_modules/.package-lock.json",
    "node_modules/",
    "test/harness.js",
    "test/namespaces/jsdemo.py",
    "test/",
    "../setup.py",
    "%2e%2e/setup.py",
    "node_modules/socket.io-client/dist/../package.json",
    "./package.json",
    ".hidden",
    "css/.hidden",
]


@pytest.mark.parametrize("path", REFUSED)
def test_static_never_serves_manifests_tests_or_node_modules(serve, static_node_modules, path):
    server = serve()
    response = get(server, "/static/" + path)
    assert response.status_code == 404, response.text[:200]


def test_static_serves_what_the_demo_page_loads(serve, static_node_modules):
    server = serve(BoardNamespace, blueprints=[board_pages])
    page = get(server, "/board/").text
    loaded = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert len(loaded) == 4, loaded                       # socket.io, sbio.js, board.js, demo.css
    for path in loaded:
        response = get(server, path)
        assert response.status_code == 200, path
        assert response.content
    assert get(server, "/static/node_modules/socket.io-client/dist/socket.io.min.js.map") \
        .status_code == 200                               # the bundle's source map


def test_static_serves_dotless_files_of_an_own_static_dir(serve, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.svg").write_text("<svg/>")
    (tmp_path / "app.js").write_text("// app")
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / "node_modules" / "chart").mkdir(parents=True)
    (tmp_path / "node_modules" / "chart" / "chart.js").write_text("// chart")
    (tmp_path / "node_modules" / "chart" / "package.json").write_text("{}")
    server = serve(config=config(static_dir=str(tmp_path),
                                 static_node_modules=["chart/chart.js"]))
    assert get(server, "/static/img/logo.svg").text == "<svg/>"
    assert get(server, "/static/app.js").text == "// app"
    assert get(server, "/static/node_modules/chart/chart.js").text == "// chart"
    for path in [".env", "node_modules/chart/package.json",
                 "node_modules/socket.io-client/dist/socket.io.min.js"]:
        assert get(server, "/static/" + path).status_code == 404, path


def test_raw_traversal_requests_are_refused(serve):
    """What a client sends when it does not normalise the path first."""
    server = serve()
    for target in ["/static/../setup.py", "/static/..%2fsetup.py", "/static/%2e%2e%2fsetup.py",
                   "/static/node_modules%2fsocket.io-client%2fpackage.json"]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = answer.split(b"\r\n", 1)[0]
        assert b" 404 " in status, (target, status)
