"""Packaging for sbio: the metadata lives in pyproject.toml.

This shim stays for what has to be code, the build step: the browser client
every sbio server serves at ``/sbio/`` (see ``sbio/client_assets.py``) is
copied into the package as ``sbio/_client/`` — ``static/sbio.js`` and
socket.io-client's browser bundle from ``static/node_modules`` (``npm ci
--prefix static`` is run first when it is missing). The copies are made in
the build tree (and in the sdist, so a wheel built from the sdist has them),
never in the checkout: ``sbio/_client/`` is not committed. An editable
install copies nothing; the server serves the checkout's ``static/`` then.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

ROOT = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(ROOT, "static")
SOCKETIO_DIST = os.path.join("node_modules", "socket.io-client", "dist")
#: name in sbio/_client/ -> source relative to static/; the source maps are optional
CLIENT_FILES = {
    "sbio.js": "sbio.js",
    "socket.io.min.js": os.path.join(SOCKETIO_DIST, "socket.io.min.js"),
    "socket.io.min.js.map": os.path.join(SOCKETIO_DIST, "socket.io.min.js.map"),
}
REQUIRED = ("sbio.js", "socket.io.min.js")


def copy_client(target):
    """Copy the client files into *target* (``.../sbio/_client``).

    From a checkout: from ``static/``, after ``npm ci --prefix static`` if the
    bundle is missing. From an sdist (no ``static/``): the files are already
    package data; nothing to do, but they must be there.
    """
    if not os.path.isfile(os.path.join(STATIC, "package.json")):
        missing = [n for n in REQUIRED if not os.path.isfile(os.path.join(target, n))]
        if missing:
            raise SystemExit(f"sbio build: neither static/ nor sbio/_client/{missing[0]} "
                             "exists: build from a checkout of the sbio repository or its sdist")
        return
    if not os.path.isfile(os.path.join(STATIC, CLIENT_FILES["socket.io.min.js"])):
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("sbio build: static/node_modules is missing and npm is not "
                             "installed: install Node.js and npm, or run `npm ci --prefix "
                             "static` where npm is available, then build again")
        subprocess.run([npm, "ci", "--prefix", STATIC, "--no-audit", "--no-fund"],
                       check=True, timeout=600)
    os.makedirs(target, exist_ok=True)
    for name, source in CLIENT_FILES.items():
        path = os.path.join(STATIC, source)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(target, name))
        elif name in REQUIRED:
            raise SystemExit(f"sbio build: static/{source} is missing")


class build_py(_build_py):
    """setuptools' build_py, plus the client files in ``build/lib/sbio/_client/``."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            copy_client(os.path.join(self.build_lib, "sbio", "_client"))


class sdist(_sdist):
    """setuptools' sdist, plus the client files in the archive's ``sbio/_client/``."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        copy_client(os.path.join(base_dir, "sbio", "_client"))


setup(cmdclass={"build_py": build_py, "sdist": sdist})
