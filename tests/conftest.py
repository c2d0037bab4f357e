import os
import sys

# The bundled application's namespaces import as plain modules (`import chat`),
# as `sbio run` imports them.
NAMESPACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "namespaces")
if NAMESPACES_DIR not in sys.path:
    sys.path.insert(0, NAMESPACES_DIR)


import faulthandler  # noqa: E402
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


# -- a hard bound on every test ------------------------------------------------
# pytest-timeout (`timeout` in pytest.ini) fails a test from a SIGALRM handler,
# which runs in whichever greenlet the main thread is in when the signal lands.
# When a test is stuck because some *other* greenlet holds the hub, that
# Failed is raised in the wrong greenlet (gevent's hub prints it and goes on)
# and the test never ends: a CI run once hung here until its 90-minute limit
# (tests/test_watchdog.py shows the case). So every test also runs under a
# watchdog of its own, in a real thread, which WATCHDOG_MARGIN seconds after
# pytest-timeout should have fired writes the stack of every greenlet and
# every thread to the real stderr and ends the process with status 1.
# faulthandler's C thread backs it up (the same stacks, without the
# greenlets' own) should the Python watchdog itself not get the GIL.
WATCHDOG_MARGIN = 60
WATCHDOG_BACKSTOP = 30
_watchdog_file = None


def pytest_configure(config):
    global _watchdog_file
    # Capture is suspended while plugins configure, so fd 2 is the terminal's
    # stderr here (pytest's own faulthandler plugin dups it at the same point).
    _watchdog_file = os.fdopen(os.dup(sys.__stderr__.fileno()), "w")


def pytest_unconfigure(config):
    global _watchdog_file
    if _watchdog_file is not None:
        _watchdog_file.close()
        _watchdog_file = None


def _hard_timeout(item):
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        seconds = float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    else:
        seconds = float(item.config.getini("timeout") or 0)
    return seconds + WATCHDOG_MARGIN if seconds > 0 else None


def _watch(nodeid, seconds, cancelled, out, test_greenlet):
    if cancelled.acquire(timeout=seconds):   # the test ended in time
        return
    import traceback

    from gevent.util import format_run_info

    out.write(f"\n\n== {nodeid} still running {seconds:g} s after it started, "
              f"{WATCHDOG_MARGIN} s past its timeout\n")
    try:
        frame = test_greenlet.gr_frame
        if frame is not None:
            out.write("== where the test waits:\n" + "".join(traceback.format_stack(frame)[-20:]))
        out.write("== every greenlet and thread:\n" + "\n".join(format_run_info()) + "\n")
    finally:
        out.flush()
        faulthandler.dump_traceback(out, all_threads=True)
        out.flush()
        os._exit(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds = _hard_timeout(item)
    if seconds is None or _watchdog_file is None:
        yield
        return
    import greenlet
    from gevent import monkey

    cancelled = monkey.get_original("_thread", "allocate_lock")()
    cancelled.acquire()
    monkey.get_original("_thread", "start_new_thread")(
        _watch, (item.nodeid, seconds, cancelled, _watchdog_file, greenlet.getcurrent()))
    faulthandler.dump_traceback_later(seconds + WATCHDOG_BACKSTOP, exit=True,
                                      file=_watchdog_file)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        cancelled.release()
