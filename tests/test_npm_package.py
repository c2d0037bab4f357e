"""static/ is the npm package sbio-client: `npm pack`, installed into a fresh Node project.

The tarball is installed into a temporary project outside the repository
(socket.io-client comes from npm's cache or registry) and used with
`require` and `import` against a live sbio server. Without node/npm the test
is skipped (a failure under SBIO_REQUIRE_SERVICES=1).
"""
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

import sbio
from sbio.testing import missing_service

from chat import Chat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(REPO, "static")
NPM_TIMEOUT = 300  # npm install may download socket.io-client


def test_the_package_version_is_sbios():
    with open(os.path.join(STATIC, "package.json")) as f:
        package = json.load(f)
    assert package["version"] == sbio.__version__
    assert not package.get("private")
    with open(os.path.join(STATIC, "sbio.js")) as f:
        assert re.search(r'var VERSION = "([^"]+)";', f.read()).group(1) == sbio.__version__


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A Node project with the packed sbio-client installed: (directory, tarball members)."""
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        missing_service("node and npm (apt-get install nodejs npm)")
    root = tmp_path_factory.mktemp("npm")
    packed = subprocess.run([npm, "pack", "--pack-destination", str(root), "--json"], cwd=STATIC,
                            capture_output=True, text=True, timeout=NPM_TIMEOUT)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    tarball = root / json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(tarball) as tar:
        members = sorted(tar.getnames())
    project = root / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "user-project", "private": true}\n')
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefer-offline",
                             str(tarball)], cwd=project, capture_output=True, text=True,
                            timeout=NPM_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    return project, members


def test_the_tarball_holds_the_client_only(installed):
    _, members = installed
    assert members == ["package/package.json", "package/sbio.d.ts", "package/sbio.js",
                       "package/sbio.mjs"]


CJS = """
const sbio = require("sbio-client");
const conn = sbio.connect(process.env.SBIO_URL + "/chat");       // a full URL, like io(url)
const fail = setTimeout(() => { console.error("timed out"); process.exit(2); }, 20000);
conn.call("login", "ann", "secret").then((me) => conn.call("whoami").then((who) => {
  console.log(JSON.stringify({ me, who, version: sbio.version }));
  clearTimeout(fail);
  conn.close();
}), (err) => { console.error(err); process.exit(1); });
"""

ESM = """
import sbio, { connect, SbioError } from "sbio-client";
const conn = connect("/chat", { url: process.env.SBIO_URL });   // the namespace + options.url
const fail = setTimeout(() => { console.error("timed out"); process.exit(2); }, 20000);
try {
  await conn.call("whoami");                                    // the ACL: not logged in
  console.error("whoami was allowed");
  process.exit(1);
} catch (err) {
  const me = await conn.call("login", "bob", "secret");
  console.log(JSON.stringify({ me, code: err.code, isSbioError: err instanceof SbioError,
                               same: sbio.connect === connect }));
}
clearTimeout(fail);
conn.close();
"""


def _node(project, name, source, url):
    (project / name).write_text(source)
    result = subprocess.run(["node", name], cwd=project, env=dict(os.environ, SBIO_URL=url),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_require_and_import_against_a_live_server(installed, sbio_server):
    project, _ = installed
    server = sbio_server(Chat)
    assert _node(project, "cjs.js", CJS, server.url) == {
        "me": {"user": "ann"}, "who": "ann", "version": sbio.__version__}
    assert _node(project, "esm.mjs", ESM, server.url) == {
        "me": {"user": "bob"}, "code": "forbidden", "isSbioError": True, "same": True}
