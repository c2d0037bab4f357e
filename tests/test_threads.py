"""Emit from OS threads (issue 13): what a native thread sends reaches the client promptly.

The test suite monkey-patches gevent (``sbio.testing``), so ``threading.Thread``
would be a greenlet; these tests start genuine OS threads with the original
``_thread.start_new_thread`` and check, inside each, that it is not the
hub's thread. The hub is left idle while they run (the test greenlet sleeps
in short steps; pings are set far apart), so only the hand-off can wake it.
"""
import gevent
import pytest
from gevent import monkey

from sbio import Namespace, SbioError
from sbio.config import load_sbio_config

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_real_ident = monkey.get_original("_thread", "get_ident")

PER_THREAD = 250
THREADS = 4


class Ticks(Namespace):
    name = "/ticks"


def _config():
    return load_sbio_config(overrides={
        "server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "sbio-tests",
        # nothing but the hand-off wakes the hub while the threads emit
        "server.ping_interval": 300, "server.ping_timeout": 300})


class _Threads:
    """OS threads started with the original start_new_thread; :meth:`join` yields to the hub."""

    def __init__(self, functions):
        self.results = [None] * len(functions)
        self.done = []  # list.append is atomic across threads
        self.count = len(functions)

    def join(self, timeout=60):
        """Wait (sleeping in short steps) until every thread returned; what each returned.

        Raises what one raised, or AssertionError after *timeout* s.
        """
        with gevent.Timeout(timeout, AssertionError(f"threads still running after {timeout}s")):
            while len(self.done) < self.count:
                gevent.sleep(0.01)
        for result in self.results:
            if isinstance(result, BaseException):
                raise result
        return self.results


def _start_native_threads(*functions):
    """Run each function in an OS thread of its own (a failure when it is the hub's thread).

    Does not wait: the caller may leave the hub idle (e.g. waiting for what the
    threads send), so that only the hand-off can wake it; then :meth:`_Threads.join`.
    """
    hub_thread = _real_ident()
    threads = _Threads(functions)
    results, done = threads.results, threads.done

    def run(index, fn):
        try:
            assert _real_ident() != hub_thread, "not a native thread"
            results[index] = fn()
        except BaseException as exc:  # handed to the test
            results[index] = exc
        finally:
            done.append(index)

    for index, fn in enumerate(functions):
        _start_new_thread(run, (index, fn))
    return threads


def _in_native_threads(*functions):
    return _start_native_threads(*functions).join()


@pytest.fixture
def served(sbio_server, sbio_live_client):
    server = sbio_server(Ticks, config=_config())
    client = sbio_live_client(server, "/ticks", timeout=60)
    instance = server.dispatcher("/ticks").instances[client.sid]
    return server, client, instance


def test_1000_emits_from_4_native_threads_all_arrive_in_order(served):
    server, client, instance = served

    def emitter(thread, send):
        def run():
            for seq in range(PER_THREAD):
                send(thread, seq)
        return run

    senders = [
        lambda thread, seq: instance.emit("tick", thread, seq),
        lambda thread, seq: instance.broadcast("tick", thread, seq),
        lambda thread, seq: server.emit("tick", thread, seq, namespace="/ticks",
                                        to=instance.sid),
        lambda thread, seq: instance.emit("tick", thread, seq, to=instance.sid),
    ]
    threads = _start_native_threads(*(emitter(t, send) for t, send in enumerate(senders)))
    # Waiting for the packets, not polling: the hub sleeps until data arrives.
    # They take well under 2 s; emitted straight from the threads (no hand-off)
    # they sat in the queues until something else woke the hub: 45 s here.
    client.receive("tick", count=THREADS * PER_THREAD, timeout=20)
    threads.join()
    ticks = client.received("tick")
    assert len(ticks) == THREADS * PER_THREAD
    for thread in range(THREADS):
        assert [seq for t, seq in ticks if t == thread] == list(range(PER_THREAD)), thread


def test_send_rooms_and_disconnect_from_a_native_thread(served):
    server, client, instance = served

    def work():
        instance.send("hello")
        instance.enter_room("r")
        server.emit("in room", 1, namespace="/ticks", to="r")
        instance.leave_room("r")
        server.emit("in room", 2, namespace="/ticks", to="r")  # left: not received
        instance.emit("done")
        instance.disconnect()

    threads = _start_native_threads(work)
    client.receive("disconnect", timeout=60)
    threads.join()
    assert client.received("message") == [["hello"]]
    assert client.received("in room") == [[1]]
    names = [name for name, _ in client.received()]
    assert names.index("done") < names.index("disconnect")


def test_call_from_a_native_thread_is_a_clear_error(served):
    _server, _client, instance = served

    def call():
        try:
            instance.call("question")
        except SbioError as exc:
            return str(exc)
        return None

    (message,) = _in_native_threads(call)
    assert message is not None and "another OS thread" in message


def test_an_emit_that_fails_in_the_hub_is_logged_and_the_next_one_goes(served, caplog):
    _server, client, instance = served

    def work():
        instance.emit("bad", object())  # not JSON: raises in the hub, not in the thread
        instance.emit("good")

    threads = _start_native_threads(work)
    client.receive("good", timeout=60)
    threads.join()
    assert any("emit from another thread" in r.getMessage() and r.exc_info
               for r in caplog.records)


def test_in_process_server_takes_emits_from_native_threads(sbio_client, monkeypatch):
    c = sbio_client(Ticks)
    instance = c.instance
    delivered_in = set()
    record = c._record

    def spy(event, args):  # the in-process client receives in the thread that sends
        delivered_in.add(_real_ident())
        record(event, args)

    monkeypatch.setattr(c, "_record", spy)

    def work():
        for seq in range(100):
            instance.emit("tick", seq)

    threads = _start_native_threads(work)
    c.receive("tick", count=100, timeout=60)
    threads.join()
    assert [args[0] for args in c.received("tick")] == list(range(100))
    assert delivered_in == {_real_ident()}, "sent from the thread, not from the server's hub"


def test_after_stop_emits_from_threads_are_dropped(sbio_server):
    server = sbio_server(Ticks, config=_config())
    instance = Ticks(server, "no-such-sid", {})
    server.stop(timeout=5)
    assert _in_native_threads(lambda: instance.emit("late")) == [None]
    assert server._handoff.closed
