"""A plain Node socket.io-client v4 against a real sbio server (tests/node/*.test.js)."""
import os
import shutil
import subprocess

import pytest

import sbio
from sbio import Namespace, RpcError
from sbio.testing import missing_service

from test_server import Chat  # the bundled chat plus failure handlers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(REPO, "static")


@pytest.fixture(scope="module")
def node_modules():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing_service("node and npm (apt-get install nodejs npm)")
    path = os.path.join(STATIC, "node_modules")
    if not os.path.isdir(os.path.join(path, "socket.io-client")):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=STATIC, check=True,
                       timeout=600, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return path


def _node_test(server, script, node_modules):
    env = dict(os.environ, SBIO_URL=server.url, NODE_PATH=node_modules)
    result = subprocess.run(["node", "--test", os.path.join(REPO, "tests", "node", script)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    return result.stdout


def test_plain_socketio_client(sbio_server, node_modules):
    output = _node_test(sbio_server(Chat), "raw_client.test.js", node_modules)
    assert "# fail 0" in output and "# pass 6" in output, output


class PlainFrontEnd(Namespace):
    """What a plain socket.io server gives the front end of plain_frontend.test.js."""

    name = "/"
    raw_acks = True

    def on_connect(self, auth):
        self.session["name"] = (auth or {}).get("name", "anonymous")
        self.emit("welcome", {"name": self.session["name"]})

    @sbio.event("chat message")
    def chat_message(self, text: str):
        self.broadcast("chat message", self.session["name"], text)

    @sbio.event("message-with-ack")
    def echo(self, *args):
        return args

    @sbio.event("get-user")
    def get_user(self, user_id: int):
        if user_id < 0:
            raise RpcError("no_such_user", f"no user {user_id}")
        return {"id": user_id, "name": f"user {user_id}"}

    @sbio.event("add numbers")
    def add(self, a: int, b: int):
        return a + b

    @sbio.event("mark read")
    def mark_read(self, message_id: int):
        return None

    def on_message(self, text: str):
        self.send(f"pong: {text}")


def test_a_plain_socketio_front_end_works_unchanged(sbio_server, node_modules):
    output = _node_test(sbio_server(PlainFrontEnd), "plain_frontend.test.js", node_modules)
    assert "# fail 0" in output and "# pass 2" in output, output
