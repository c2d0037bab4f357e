import os
import sys

# The bundled application's namespaces import as plain modules (`import chat`),
# as `sbio run` imports them.
NAMESPACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "namespaces")
if NAMESPACES_DIR not in sys.path:
    sys.path.insert(0, NAMESPACES_DIR)


import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from sbio.testing import missing_service  # noqa: E402

STATIC_DIR = os.path.join(os.path.dirname(NAMESPACES_DIR), "static")


@pytest.fixture(scope="session")
def static_node_modules():
    """static/node_modules (socket.io-client for the pages and sbio.js), installed if missing.

    README's run command installs it with `npm ci --prefix static`; the
    tests that serve pages install it themselves, so `python -m pytest` on a
    fresh clone needs nothing else.
    """
    path = os.path.join(STATIC_DIR, "node_modules")
    if os.path.isfile(os.path.join(path, "socket.io-client", "dist", "socket.io.min.js")):
        return path
    npm = shutil.which("npm")
    if npm is None:
        missing_service("npm (to install static/node_modules; apt-get install npm)")
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=STATIC_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600)
    if result.returncode != 0:
        pytest.fail(f"`npm ci` in static/ failed:\n{result.stdout}", pytrace=False)
    return path
