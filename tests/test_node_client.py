"""A plain Node socket.io-client v4 against a real sbio server (tests/node/*.test.js)."""
import os
import shutil
import subprocess

import pytest

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


def test_plain_socketio_client(sbio_server, node_modules):
    server = sbio_server(Chat)
    env = dict(os.environ, SBIO_URL=server.url, NODE_PATH=node_modules)
    result = subprocess.run(["node", "--test", os.path.join(REPO, "tests", "node")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "# fail 0" in result.stdout and "# pass 6" in result.stdout, result.stdout
