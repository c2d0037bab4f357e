"""Tests for sbio.tasks: lifecycle hooks, DaemonTask, Caller, and their fixtures.

No test asserts timing. Interval runs are counted with a FakeClock; the few
real-time waits (joins, deadlines that must expire) are short and bounded.
"""
import contextlib
import gc
import logging
import queue
import subprocess
import sys

import gevent
import pytest
from gevent import GreenletExit
from gevent.event import Event

import sbio.tasks as tasks
from sbio._fixtures_tasks import *  # noqa: F403 (fixtures; the sbio plugin re-exports them too)
from sbio._fixtures_tasks import FakeClock
from sbio.errors import SbioError, SbioTimeoutError
from sbio.tasks import (
    Caller,
    DaemonTask,
    GenericCaller,
    Lifecycle,
    LifecycleError,
    QueueFull,
    on_shutdown,
    on_startup,
)

LOGGER = "sbio.tasks"


def wait_until(predicate, timeout=5.0):
    """Yield to other greenlets until *predicate()* holds; fail after *timeout* s."""
    with gevent.Timeout(timeout, AssertionError(f"condition not met within {timeout} s")):
        while not predicate():
            gevent.sleep(0.001)


def alive_greenlets():
    return [o for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead]


@pytest.fixture
def lc():
    """A private Lifecycle, stopped at the end of the test."""
    life = Lifecycle(name="test-lifecycle")
    yield life
    life.stop(timeout=5)


# -- hooks ------------------------------------------------------------------


def test_hooks_run_by_priority_then_registration_order(lc):
    calls = []

    @lc.on_startup(priority=60)
    def late():
        calls.append("late")

    @lc.on_startup
    def default_a():
        calls.append("default_a")

    lc.on_startup(lambda: calls.append("early"), priority=10)
    lc.on_startup(lambda: calls.append("default_b"))
    lc.on_shutdown(lambda: calls.append("down-90"), priority=90)
    lc.on_shutdown(lambda: calls.append("down-5"), priority=5)

    assert late.__name__ == "late"  # the decorator returns the function
    lc.start()
    assert calls == ["early", "default_a", "default_b", "late"]
    calls.clear()
    lc.stop()
    assert calls == ["down-5", "down-90"]


def test_hook_registration_errors(lc):
    with pytest.raises(TypeError, match=r"@on_startup\(priority=40\)"):
        lc.on_startup(40)
    with pytest.raises(TypeError, match="priority"):
        lc.on_shutdown(lambda: None, priority="high")
    with pytest.raises(TypeError):
        lc.add_hooks(startup="not callable")


def test_module_level_functions_use_the_global_lifecycle(sbio_lifecycle):
    calls = []

    @on_startup(priority=40)
    def warm_cache():
        calls.append("warm")

    on_shutdown(lambda: calls.append("cool"))
    assert sbio_lifecycle is tasks.lifecycle
    assert tasks.stopped is tasks.lifecycle.stopped
    with sbio_lifecycle:
        assert not tasks.stopped.is_set()
        assert calls == ["warm"]
    assert tasks.stopped.is_set()
    assert calls == ["warm", "cool"]


def test_start_and_stop_are_idempotent_and_restartable(lc):
    calls = []
    lc.on_startup(lambda: calls.append("up"))
    lc.on_shutdown(lambda: calls.append("down"))
    assert lc.stopped.is_set() and not lc.running

    assert lc.stop() == []  # stopping a stopped lifecycle does nothing
    lc.start()
    lc.start()
    assert calls == ["up"]
    assert lc.running and not lc.stopped.is_set()
    lc.stop()
    lc.stop()
    assert calls == ["up", "down"]
    assert lc.stopped.is_set() and lc.state == "stopped"

    with lc:  # and again, as a context manager
        assert lc.running
    assert calls == ["up", "down", "up", "down"]


def test_startup_hook_added_while_running_runs_at_once(lc):
    calls = []
    lc.start()
    lc.on_startup(lambda: calls.append("late"))
    assert calls == ["late"]
    with pytest.raises(LifecycleError, match="ZeroDivisionError"):
        lc.on_startup(lambda: 1 / 0, priority=3)


def test_hook_registered_by_a_startup_hook_runs_in_the_same_start(lc):
    calls = []

    def register_more():
        calls.append("first")
        lc.on_startup(lambda: calls.append("added"), priority=99)

    lc.on_startup(register_more)
    lc.on_startup(lambda: calls.append("second"), priority=60)
    lc.start()
    assert calls == ["first", "second", "added"]


def test_startup_failure_aborts_and_runs_the_due_shutdown_hooks(lc, caplog):
    calls = []
    ran = Event()
    DaemonTask(ran.set, interval=10, lifecycle=lc)

    lc.add_hooks(startup=lambda: calls.append("db up"), shutdown=lambda: calls.append("db down"),
                 priority=10, name="db")

    @lc.on_startup(priority=20)
    def load_fixtures():
        raise ValueError("bad fixture file")

    lc.add_hooks(startup=lambda: calls.append("cache up"),
                 shutdown=lambda: calls.append("cache down"), priority=30, name="cache")
    lc.on_shutdown(lambda: calls.append("flush logs"), priority=90)

    with caplog.at_level(logging.ERROR, logger=LOGGER), pytest.raises(LifecycleError) as info:
        lc.start()
    error = info.value
    assert isinstance(error, SbioError)
    assert "load_fixtures" in str(error) and "bad fixture file" in str(error)
    assert "start-up aborted" in str(error)
    assert error.hook.endswith("load_fixtures")
    assert isinstance(error.__cause__, ValueError)
    # "cache" never started, so its shutdown hook is not due; the lone shutdown hook is.
    assert calls == ["db up", "db down", "flush logs"]
    assert lc.state == "stopped" and lc.stopped.is_set()
    assert not ran.is_set() and not any(s.running for s in lc.services)
    assert "start-up aborted" in caplog.text

    # Fixed, it starts again from the beginning.
    calls.clear()
    lc._startup = [h for h in lc._startup if not h.name.endswith("load_fixtures")]
    lc.start()
    assert calls == ["db up", "cache up"]
    assert ran.wait(5)


def test_shutdown_hook_errors_are_logged_and_the_others_run(lc, caplog):
    calls = []

    def broken():
        raise RuntimeError("disk gone")

    lc.on_shutdown(lambda: calls.append(1), priority=1)
    lc.on_shutdown(broken, priority=2)
    lc.on_shutdown(lambda: 1 / 0, priority=3)
    lc.on_shutdown(lambda: calls.append(4), priority=4)
    lc.start()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        errors = lc.stop()
    assert calls == [1, 4]
    assert [type(e) for _, e in errors] == [RuntimeError, ZeroDivisionError]
    assert errors[0][0].endswith("broken")
    records = [r for r in caplog.records if r.name == LOGGER and r.exc_info]
    assert len(records) == 2 and "broken" in records[0].getMessage()


def test_a_hanging_shutdown_hook_is_cut_off(lc, caplog):
    calls = []
    lc.min_hook_timeout = 0.05
    lc.on_shutdown(lambda: gevent.sleep(30), priority=1)
    lc.on_shutdown(lambda: calls.append("after"), priority=2)
    lc.start()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        errors = lc.stop(timeout=0)
    assert calls == ["after"]
    assert len(errors) == 1 and isinstance(errors[0][1], SbioTimeoutError)
    assert "did not return" in caplog.text


def test_stop_from_a_startup_hook_is_refused(lc):
    lc.on_startup(lambda: lc.stop())
    with pytest.raises(LifecycleError, match="raise an exception from the hook"):
        lc.start()
    assert lc.state == "stopped"


def test_stop_during_start_from_another_greenlet(lc):
    release = Event()
    calls = []
    lc.on_startup(lambda: release.wait(5))
    lc.on_shutdown(lambda: calls.append("down"))
    starter = gevent.spawn(lc.start)
    wait_until(lambda: lc.state == "starting")
    stopper = gevent.spawn(lc.stop)
    wait_until(lambda: lc.stopped.is_set())  # the stop request is visible at once
    release.set()
    gevent.joinall([starter, stopper], timeout=5, raise_error=True)
    assert lc.state == "stopped" and calls == ["down"]


def test_add_hooks_with_a_key_replaces_and_removes(lc):
    calls = []
    lc.add_hooks(startup=lambda: calls.append("v1"), key="ns")
    lc.add_hooks(startup=lambda: calls.append("v2"), shutdown=lambda: calls.append("v2 down"),
                 key="ns")
    lc.start()
    lc.stop()
    assert calls == ["v2", "v2 down"]
    assert lc.remove_hooks("ns") is True
    assert lc.remove_hooks("ns") is False
    calls.clear()
    with lc:
        pass
    assert calls == []


# -- DaemonTask ----------------------------------------------------------------


def test_interval_task_runs_the_expected_number_of_times(sbio_lifecycle, sbio_clock):
    runs = []
    task = DaemonTask(lambda: runs.append(sbio_clock.time()), interval=10, name="ticker")
    assert task.lifecycle is sbio_lifecycle and not task.running
    sbio_lifecycle.start()
    assert task.running
    sbio_clock.wait_for_sleepers(1)
    assert runs == [0]  # the first call happens at start
    sbio_clock.advance(35)
    assert runs == [0, 10, 20, 30]
    sbio_clock.advance(5)
    assert runs == [0, 10, 20, 30, 40]
    sbio_clock.advance(9)
    assert len(runs) == 5  # nothing is due: no idle wake-ups
    assert sbio_lifecycle.stop() == []
    assert not task.running and task.greenlets() == []
    sbio_clock.advance(100)
    assert len(runs) == 5


def test_interval_task_with_several_threads(sbio_lifecycle, sbio_clock):
    runs = []
    DaemonTask(lambda: runs.append(1), interval=1, threads=3)
    with sbio_lifecycle:
        sbio_clock.wait_for_sleepers(3)
        sbio_clock.advance(2)
        assert len(runs) == 9


def test_stop_does_not_wait_for_the_interval(caplog):
    # The real waiter: stop sets the event the loop waits on, so it ends at once.
    life = Lifecycle()
    ran = Event()
    task = DaemonTask(ran.set, interval=3600, lifecycle=life)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        life.start()
        assert ran.wait(5)
        assert task.stop(timeout=30) is True  # clean: nothing killed
        life.stop()
    assert "killing" not in caplog.text


def test_task_without_interval_loops_until_stopped():
    life = Lifecycle()
    count = [0]

    def step():
        count[0] += 1
        gevent.sleep(0)

    task = DaemonTask(step, lifecycle=life)
    task.start()
    wait_until(lambda: count[0] >= 5)
    assert task.stop(timeout=5) is True
    done = count[0]
    gevent.sleep(0)
    assert count[0] == done and task.greenlets() == []


def test_crashing_task_keeps_running_and_logs(sbio_lifecycle, sbio_clock, caplog):
    calls = []

    def flaky():
        calls.append(1)
        raise RuntimeError(f"failure {len(calls)}")

    DaemonTask(flaky, interval=10, name="flaky-task")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        sbio_lifecycle.start()
        sbio_clock.wait_for_sleepers(1)
        sbio_clock.advance(25)
    assert len(calls) == 3
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 3
    assert all("flaky-task" in r.getMessage() and r.exc_info for r in records)
    assert "failure 3" in caplog.text


def test_crashing_task_without_interval_backs_off(sbio_lifecycle, sbio_clock, caplog):
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("no")

    task = DaemonTask(broken)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        task.start()
        sbio_clock.wait_for_sleepers(1)
        assert len(calls) == 1  # not spinning: it waits error_backoff (fake) seconds
        sbio_clock.advance(task.error_backoff * 2)
        assert len(calls) == 3


def test_task_that_ignores_stop_is_killed_at_the_deadline(caplog):
    life = Lifecycle()
    started = Event()

    def stubborn():
        started.set()
        Event().wait(60)  # never looks at `stopped`

    task = DaemonTask(stubborn, interval=1, name="stubborn-task", lifecycle=life)
    life.start()
    assert started.wait(5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert task.stop(timeout=0.05) is False
    assert task.greenlets() == [] and not task.running
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "stubborn-task" in warning.getMessage() and "killing 1" in warning.getMessage()
    life.stop()


def test_task_that_swallows_greenletexit_once_is_still_stopped(caplog):
    life = Lifecycle()
    started = Event()
    swallowed = []

    def stubborn():
        started.set()
        try:
            Event().wait(60)
        except GreenletExit:
            swallowed.append(1)  # and return as if nothing happened

    DaemonTask(stubborn, name="swallower", lifecycle=life)
    life.start()
    assert started.wait(5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        life.kill_timeout = 5
        life.stop(timeout=0.05)
    assert swallowed == [1]  # the loop saw the stop event after the call returned
    assert "swallower" in caplog.text and not any(s.greenlets() for s in life.services)


def test_greenlet_that_survives_kill_is_abandoned_and_logged(caplog):
    life = Lifecycle()
    life.kill_timeout = 0.05
    started, release = Event(), Event()

    def immortal():
        started.set()
        while not release.is_set():
            with contextlib.suppress(GreenletExit):
                release.wait(60)

    task = DaemonTask(immortal, name="immortal-task", lifecycle=life)
    life.start()
    assert started.wait(5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        life.stop(timeout=0.05)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "immortal-task" in errors[0].getMessage()
    assert "abandoned" in errors[0].getMessage()
    assert not task.running
    abandoned = task.greenlets()
    release.set()
    gevent.joinall(abandoned, timeout=5)
    assert all(g.dead for g in abandoned)


def test_task_created_after_start_starts_at_once(lc):
    lc.start()
    ran = Event()
    task = DaemonTask(ran.set, interval=60, lifecycle=lc)
    assert task.running
    assert ran.wait(5)
    caller = Caller(lambda: None, lifecycle=lc)
    assert caller.running
    lc.stop()
    assert not task.running and not caller.running


def test_task_can_stop_the_lifecycle_from_its_own_greenlet(lc):
    down = Event()
    lc.on_shutdown(down.set)
    DaemonTask(lambda: lc.stop(timeout=5), interval=60, lifecycle=lc)
    lc.start()
    assert down.wait(5)
    wait_until(lambda: not any(s.greenlets() for s in lc.services))
    assert lc.state == "stopped"


def test_task_restarts_after_stop(lc):
    runs = []
    DaemonTask(lambda: runs.append(1), interval=60, lifecycle=lc)
    for expected in (1, 2, 3):
        lc.start()
        wait_until(lambda expected=expected: len(runs) == expected)
        lc.stop()


def test_task_argument_validation(lc):
    with pytest.raises(TypeError):
        DaemonTask("nope", lifecycle=lc)
    with pytest.raises(ValueError):
        DaemonTask(lambda: None, interval=-1, lifecycle=lc)
    with pytest.raises(ValueError):
        DaemonTask(lambda: None, threads=0, lifecycle=lc)
    assert lc.services == []


def test_no_greenlets_left_after_stop(lc):
    before = {id(g) for g in alive_greenlets()}
    gate = Event()
    DaemonTask(lambda: None, interval=5, threads=3, lifecycle=lc)
    DaemonTask(lambda: gate.wait(5), lifecycle=lc)
    Caller(lambda x: None, threads=4, lifecycle=lc).defer(1)
    GenericCaller(threads=2, lifecycle=lc)
    lc.start()
    gevent.sleep(0)
    assert len([g for g in alive_greenlets() if id(g) not in before]) == 10
    gate.set()
    lc.stop(timeout=5)
    assert [g for g in alive_greenlets() if id(g) not in before] == []
    assert all(s.greenlets() == [] for s in lc.services)


# -- Caller / GenericCaller -----------------------------------------------------


def test_caller_queue_is_bounded(lc):
    caller = Caller(lambda x: None, max_queue=2, name="mailer", lifecycle=lc)
    caller.defer(1)
    caller.defer(2)
    with pytest.raises(QueueFull, match="mailer") as info:
        caller.defer(3)
    assert isinstance(info.value, SbioError) and isinstance(info.value, queue.Full)
    assert caller.qsize() == 2


def test_caller_processes_in_order_with_one_thread(lc):
    seen = []
    caller = Caller(seen.append, lifecycle=lc)
    for i in range(50):
        caller.defer(i)  # deferred before start: they wait for it
    assert seen == []
    lc.start()
    assert caller.join(timeout=5)
    assert seen == list(range(50)) and caller.qsize() == 0
    caller.defer("more")
    assert caller.join(timeout=5) and seen[-1] == "more"


def test_caller_errors_are_logged_and_the_worker_goes_on(lc, caplog):
    seen = []

    def send(x):
        if x == 2:
            raise ValueError("bad address")
        seen.append(x)

    caller = Caller(send, name="mailer", lifecycle=lc)
    lc.start()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for x in (1, 2, 3):
            caller.defer(x)
        assert caller.join(timeout=5)
    assert seen == [1, 3]
    assert "mailer" in caplog.text and "bad address" in caplog.text


def test_generic_caller_runs_any_call_with_arguments(lc):
    results = []
    caller = GenericCaller(threads=3, lifecycle=lc)
    lc.start()
    caller.defer(results.append, 1)
    caller.defer(lambda a, b=0: results.append(a + b), 2, b=3)
    assert caller.join(timeout=5)
    assert sorted(results) == [1, 5]
    with pytest.raises(TypeError):
        caller.defer("not callable")


def test_caller_stop_finishes_queued_calls_and_keeps_later_ones(lc, caplog):
    seen = []
    caller = Caller(seen.append, lifecycle=lc)
    lc.start()
    for i in range(5):
        caller.defer(i)
    lc.stop(timeout=5)  # workers finish what was deferred before stop
    assert seen == [0, 1, 2, 3, 4]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        caller.defer("while stopped")
        lc.start()
        lc.stop(timeout=5)  # nothing lost across restarts
    assert seen[-1] == "while stopped"


def test_caller_workers_killed_at_deadline_leave_the_rest_queued(caplog):
    life = Lifecycle()
    started = Event()

    def slow(x):
        started.set()
        Event().wait(60)

    caller = Caller(slow, name="slowpoke", lifecycle=life)
    caller.defer(1)
    caller.defer(2)
    life.start()
    assert started.wait(5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        life.stop(timeout=0.05)
    assert "slowpoke" in caplog.text and "1 deferred call(s) still queued" in caplog.text
    assert caller.greenlets() == [] and caller.qsize() == 1


# -- fixtures and isolation ---------------------------------------------------------


def test_run_task_once_fixture(sbio_lifecycle, sbio_run_task_once, caplog):
    calls = []
    task = DaemonTask(lambda: calls.append(1), interval=60)
    sbio_run_task_once(task)
    assert calls == [1] and not task.running

    def broken():
        raise KeyError("x")

    bad = DaemonTask(broken, interval=60)
    with pytest.raises(KeyError):
        sbio_run_task_once(bad)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert isinstance(sbio_run_task_once(bad, raise_errors=False), KeyError)
    assert "broken" in caplog.text

    sbio_lifecycle.start()
    with pytest.raises(RuntimeError, match="running"):
        sbio_run_task_once(task)


def test_isolated_sets_registrations_aside_and_restores_them():
    life = Lifecycle()
    calls = []
    life.on_startup(lambda: calls.append("app"))
    app_task = DaemonTask(lambda: None, interval=60, lifecycle=life)
    with life.isolated() as same:
        assert same is life and life.services == []
        life.on_startup(lambda: calls.append("test"))
        DaemonTask(lambda: None, interval=60, lifecycle=life)
        life.start()
    assert life.state == "stopped" and calls == ["test"]
    assert life.services == [app_task]
    with life:
        pass
    assert calls == ["test", "app"]

    life.start()
    with pytest.raises(LifecycleError, match="separate Lifecycle"), life.isolated():
        pass
    life.stop()


def test_fake_clock_wakes_sleepers_in_time_order():
    clock = FakeClock()
    life = Lifecycle(waiter=clock.wait)
    order = []
    DaemonTask(lambda: order.append(("a", clock.time())), interval=3, lifecycle=life)
    DaemonTask(lambda: order.append(("b", clock.time())), interval=5, lifecycle=life)
    with life:
        clock.wait_for_sleepers(2)
        order.clear()
        clock.advance(10)
    assert order == [("a", 3), ("b", 5), ("a", 6), ("a", 9), ("b", 10)]
    assert clock.sleepers == 0


def test_import_has_no_side_effects():
    code = (
        "import gevent._hub_local as h, sbio.tasks as t;"
        "t.DaemonTask(print, 1); t.Caller(print); t.on_startup(print);"
        "assert h.get_hub_if_exists() is None, 'hub created';"
        "assert t.stopped.is_set() and not t.lifecycle.running"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
