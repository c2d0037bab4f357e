"""The suite's watchdog (tests/conftest.py) ends a test that pytest-timeout cannot.

The case it exists for: a greenlet blocks the whole hub while the test waits
on a gevent primitive. pytest-timeout's SIGALRM handler then raises into the
blocking greenlet, not the test, and the test would wait forever.
"""
import os
import subprocess
import sys
import textwrap

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

CONFTEST = f"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sbio_suite_conftest",
                                                  {os.path.join(TESTS_DIR, "conftest.py")!r})
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    suite.WATCHDOG_MARGIN = 2
    pytest_configure = suite.pytest_configure
    pytest_unconfigure = suite.pytest_unconfigure
    pytest_runtest_protocol = suite.pytest_runtest_protocol
"""

STUCK = """
    import gevent
    import gevent.event
    import pytest
    from gevent import monkey


    @pytest.mark.timeout(1)
    def test_stuck():
        def blocker():  # holds the hub past pytest-timeout's alarm
            monkey.get_original("time", "sleep")(4)
        gevent.spawn(blocker)
        gevent.sleep(0)
        gevent.event.Event().wait(120)  # the alarm cannot reach this wait


    def test_never_reached():
        pass
"""


def _run(tmp_path, body):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_case.py").write_text(textwrap.dedent(body))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p sbio.testing -p no:cacheprovider\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "test_case.py"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=100)


def test_a_test_pytest_timeout_cannot_end_is_ended_with_its_stacks(tmp_path):
    result = _run(tmp_path, STUCK)
    out = result.stdout
    assert result.returncode == 1, out
    assert "test_case.py::test_stuck still running 3 s after it started" in out, out
    # where the test waits, then every greenlet: enough to find the cause
    where = out.split("== where the test waits:", 1)[1]
    assert "gevent.event.Event().wait(120)" in where, out
    assert "== every greenlet and thread:" in out, out
    assert "test_never_reached" not in out, out


def test_a_test_that_ends_in_time_is_left_alone(tmp_path):
    result = _run(tmp_path, """
        import gevent
        import pytest


        @pytest.mark.timeout(1)
        def test_quick():
            gevent.sleep(0.1)


        def test_after():
            gevent.sleep(3.5)  # past the first test's 1 + 2 s: its watchdog was cancelled
    """)
    assert result.returncode == 0, result.stdout
    assert "2 passed" in result.stdout, result.stdout
    assert "still running" not in result.stdout, result.stdout
