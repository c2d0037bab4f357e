"""The built wheel, installed into a fresh venv outside the repository, serves the client.

`pip wheel` builds sbio from this checkout (setup.py copies sbio.js and
socket.io-client's bundle into the package); the wheel goes into a new venv
in a temporary directory (`--system-site-packages`, so sbio's dependencies
are not downloaded again, but sbio itself comes from the wheel); a small app
in another temporary directory runs with that venv's `sbio run`, and a
browser loads a page using the two `<script>` tags. Slow (a build and a
venv): the two tests share one module-scoped installation.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(REPO, "static", "node_modules", "socket.io-client", "dist")
BUILD_TIMEOUT = 600  # pip may fetch setuptools for the isolated build


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env():
    """The environment without anything pointing Python at the repository."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PYTEST_")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory, static_node_modules):
    """A venv outside the repository with the freshly built wheel installed: its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"),
          REPO], timeout=BUILD_TIMEOUT, env=_clean_env())
    wheels = list((root / "dist").glob("sbio-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")],
         timeout=120)
    bin_dir = root / "venv" / "bin"
    # --ignore-installed: the outer environment's sbio must not satisfy it
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", str(wheels[0])], timeout=300, env=_clean_env())
    return bin_dir


ECHO = """
    from sbio import Namespace


    class Echo(Namespace):
        name = "/echo"

        def on_echo(self, value):
            return value
"""

PAGE = """<!doctype html>
<meta charset="utf-8"><title>wheel</title><link rel="icon" href="data:,">
<p id="out">waiting</p>
<script src="/sbio/socket.io.min.js"></script>
<script src="/sbio/sbio.js"></script>
<script>
  const conn = sbio.connect("/echo");
  conn.call("echo", "from the wheel").then(
    (r) => { document.getElementById("out").textContent = "echo: " + r; },
    (e) => { document.getElementById("out").textContent = "error: " + e.code; });
</script>
"""


@pytest.fixture(scope="module")
def app(venv, tmp_path_factory):
    """`sbio run` of the venv in a new project directory: (url, process)."""
    project = tmp_path_factory.mktemp("project")
    (project / "namespaces").mkdir()
    (project / "namespaces" / "echo.py").write_text(textwrap.dedent(ECHO))
    (project / "static").mkdir()
    (project / "static" / "index.html").write_text(PAGE)
    with socket_port() as port:
        pass
    proc = subprocess.Popen([str(venv / "sbio"), "run", "--port", str(port)], cwd=project,
                            env=dict(_clean_env(), SBIO_SERVER__SECRET_KEY="wheel"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sbio run exited:\n{proc.communicate()[0]}")
        try:
            requests.get(url + "/", timeout=2)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sbio run did not listen:\n{proc.communicate(timeout=5)[0]}")
            time.sleep(0.1)
    yield url, proc
    proc.send_signal(signal.SIGTERM)
    try:
        output = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate(timeout=5)[0]
    assert "Traceback" not in output, output


class socket_port:
    """A free loopback port (``with socket_port() as port``)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_sbio_comes_from_the_wheel(venv, tmp_path):
    where = _run([str(venv / "python"), "-c", "import sbio, sbio.client_assets as c; "
                  "print(sbio.__file__); print(c.asset_path('sbio.js'))"],
                 cwd=tmp_path, env=_clean_env(), timeout=60).stdout.split()
    venv_root = str(venv.parent)
    assert where[0].startswith(venv_root + os.sep), where
    assert where[1] == os.path.join(os.path.dirname(where[0]), "_client", "sbio.js")


def test_the_installed_wheel_is_marked_typed(venv, tmp_path):
    # py.typed (PEP 561): a project's type checker reads sbio's annotations
    found = _run([str(venv / "python"), "-c", "import os, sbio; print(os.path.isfile("
                  "os.path.join(os.path.dirname(sbio.__file__), 'py.typed')))"],
                 cwd=tmp_path, env=_clean_env(), timeout=60).stdout.split()
    assert found == ["True"]


def test_the_installed_wheel_has_the_status_page(venv, tmp_path):
    # /sbio/status (metrics.enabled) reads its page from the package data
    found = _run([str(venv / "python"), "-c", "import sbio.ops.status as s; "
                  "print(b'sbio status' in s.page())"],
                 cwd=tmp_path, env=_clean_env(), timeout=60).stdout.split()
    assert found == ["True"]


def test_the_installed_wheel_serves_the_client(app):
    url, _ = app
    r = requests.get(url + "/sbio/sbio.js", timeout=10)
    assert r.status_code == 200 and r.headers["ETag"]
    with open(os.path.join(REPO, "static", "sbio.js"), "rb") as f:
        assert r.content == f.read()
    r = requests.get(url + "/sbio/socket.io.min.js", timeout=10)
    assert r.status_code == 200
    with open(os.path.join(DIST, "socket.io.min.js"), "rb") as f:
        assert r.content == f.read()
    assert requests.get(url + "/sbio/socket.io.min.js.map", timeout=10).status_code == 200


def test_a_page_with_the_two_script_tags_connects(app, sbio_chromium):
    from playwright.sync_api import sync_playwright

    url, _ = app
    problems = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=sbio_chromium, timeout=30_000,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url + "/static/index.html")
            page.wait_for_function(
                "document.getElementById('out').textContent !== 'waiting'")
            assert page.text_content("#out") == "echo: from the wheel"
        finally:
            browser.close()
    assert not problems, problems
