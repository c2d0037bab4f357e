"""Runs the sbio.js node tests (static/test/*.test.js) from pytest, so CI runs them.

The node tests start real sbio servers (``python -m sbio run``) with this
interpreter. Without ``node``/``npm`` the test is skipped, or fails when
``SBIO_REQUIRE_SERVICES=1`` (set by ``.ci/run``).
"""
import os
import shutil
import subprocess
import sys

import pytest

from sbio.testing import missing_service

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")

#: Generous bounds: npm ci may download; the node tests start and restart servers.
NPM_CI_TIMEOUT = 600
NPM_TEST_TIMEOUT = 600


def _run(cmd, timeout, env=None):
    try:
        return subprocess.run(
            cmd,
            cwd=STATIC,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout or ""
        if isinstance(output, bytes):
            output = output.decode("utf-8", "replace")
        pytest.fail(f"`{' '.join(cmd)}` in static/ took more than {timeout} s:\n{output}",
                    pytrace=False)


@pytest.mark.timeout(NPM_CI_TIMEOUT + NPM_TEST_TIMEOUT + 60)
def test_js_client_node_tests():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing_service("node and npm (needed for the sbio.js tests; apt-get install nodejs npm)")

    if not os.path.isdir(os.path.join(STATIC, "node_modules", "socket.io-client")):
        result = _run([npm, "ci", "--no-audit", "--no-fund"], NPM_CI_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in static/ failed (exit {result.returncode}):\n{result.stdout}",
                        pytrace=False)

    env = dict(os.environ, SBIO_PYTHON=sys.executable)
    result = _run([npm, "test"], NPM_TEST_TIMEOUT, env=env)
    if result.returncode != 0:
        pytest.fail(f"`npm test` in static/ failed (exit {result.returncode}):\n{result.stdout}",
                    pytrace=False)
