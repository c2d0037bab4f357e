"""What the soak (issue 18) found under connection churn, each reproduced deterministically.

* a client port reused while the server still runs the old connection's
  handler must not break gevent-websocket's registry of websockets (it
  raised ``KeyError`` into gevent);
* a disconnected connection's Namespace instance is not kept alive by the
  broadcaster's last cycle;
* a closed Engine.IO socket leaves no greenlet behind (its ping greenlet
  slept on for ``ping_interval``);
* the broadcaster's counters are logged at INFO every
  ``broadcaster.metrics_log_interval`` seconds while they move.

Real servers on real sockets; waits are count-based with generous timeouts.
"""
import gc
import io
import logging
import socket
import struct
import time
import weakref

import gevent
import gevent.event
import greenlet
import pytest
import websocket

from sbio import Namespace, notifies, subscribes
from sbio.config import load_sbio_config


def _config(**sections):
    overrides = {"server.host": "127.0.0.1", "server.port": 0, "server.secret_key": "sbio-tests"}
    for section, values in sections.items():
        overrides.update({f"{section}.{key}": value for key, value in values.items()})
    return load_sbio_config(overrides=overrides)


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        gevent.sleep(0.02)


def _ws_url(server):
    return server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"


def _join(server, namespace, port=0):
    """A raw websocket client from 127.0.0.1:*port* (0: any) that joined *namespace*."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.connect(("127.0.0.1", server.port))
    ws = websocket.create_connection(_ws_url(server), socket=sock, timeout=5)
    assert ws.recv().startswith("0{")
    ws.send(f"40{namespace},")
    joined = ws.recv()
    assert joined.startswith(f"40{namespace},"), joined
    return ws, sock.getsockname()[1]


def _reset(ws):
    """Drop a client's TCP connection with an RST: no close frame, no FIN, no TIME_WAIT."""
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.sock.close()


# -- a reused client address -----------------------------------------------------------

HOLD = {}


class Hold(Namespace):
    """on_disconnect waits for the test: the old connection's handler is still running."""

    name = "/hold"

    def on_disconnect(self, reason):
        if HOLD.get("armed"):
            HOLD["armed"] = False
            HOLD["entered"].set()
            HOLD["release"].wait(10)


def test_reused_client_address_keeps_the_websocket_registry_and_raises_nothing(sbio_server):
    server = sbio_server(Hold, config=_config())
    wsgi = server._wsgi_server
    hub = gevent.get_hub()
    hub.exception_stream = errors = io.StringIO()  # what gevent reports of a greenlet that raised
    HOLD.update(armed=False, entered=gevent.event.Event(), release=gevent.event.Event())
    try:
        old, port = _join(server, "/hold")
        address = ("127.0.0.1", port)
        old_entry = wsgi.clients[address]
        # the old client resets its connection; its on_disconnect holds its handler
        HOLD["armed"] = True
        _reset(old)
        assert HOLD["entered"].wait(10), "the server did not see the reset"
        # a new connection from the very same address, while the old handler runs
        new, new_port = _join(server, "/hold", port=port)
        assert new_port == port
        new_entry = wsgi.clients[address]
        assert new_entry is not old_entry
        # the old handler ends: it must leave the new connection's entry alone
        HOLD["release"].set()
        _wait_for(lambda: wsgi.connections == 1, 10, "the old connection's handler ends")
        assert wsgi.clients.get(address) is new_entry
        new.close()
        _wait_for(lambda: wsgi.connections == 0, 10, "the new connection's handler ends")
        assert address not in wsgi.clients
        assert not server.dispatcher("/hold").instances
    finally:
        HOLD["release"].set()
        del hub.exception_stream
    assert "KeyError" not in errors.getvalue(), errors.getvalue()
    assert "Traceback" not in errors.getvalue(), errors.getvalue()


# -- the broadcaster's last cycle --------------------------------------------------------

TICK = {"n": 0}


class Ticker(Namespace):
    name = "/ticker"

    @subscribes("tick")
    def on_tick(self):
        return TICK["n"]

    @subscribes("tick", shared=True)
    def on_tick_shared(self):
        return TICK["n"]

    @notifies("tick")
    def on_bump(self):
        TICK["n"] += 1
        return TICK["n"]


@pytest.mark.parametrize("event", ["tick", "tick_shared"])
def test_disconnected_instance_is_not_kept_by_the_last_cycle(sbio_server, sbio_live_client,
                                                              event):
    server = sbio_server(Ticker, config=_config())
    instances = server.dispatcher("/ticker").instances
    broadcaster = server.live.broadcaster("/ticker")
    a = sbio_live_client(server, "/ticker")
    driver = sbio_live_client(server, "/ticker")
    sub = a.subscribe(event)
    n = driver.call("bump")
    assert sub.wait_update(timeout=10) == n
    # the cycle is over and its run done: the broadcaster waits for the next notification
    _wait_for(lambda: broadcaster.registry_sizes()["running"] == 0, 10, "the re-run ends")
    ref = weakref.ref(instances[a.sid])
    a.disconnect()
    _wait_for(lambda: len(instances) == 1, 10, "the server drops the connection")

    def collected():
        gc.collect()
        return ref() is None
    _wait_for(collected, 10, "the disconnected Namespace instance is collected")
    assert broadcaster.subscription_count() == 0


# -- closed sockets leave no greenlet behind ----------------------------------------------


def _greenlets():
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet))


def test_closed_sockets_leave_no_greenlet_behind(sbio_server):
    # ping_interval far above the wait below: a ping greenlet that sleeps it out fails the test
    server = sbio_server(Hold, config=_config(server={"ping_interval": 300, "ping_timeout": 60}))
    warm, _ = _join(server, "/hold")  # the server's own greenlets (engine.io's service task)
    warm.close()
    _wait_for(lambda: server._wsgi_server.connections == 0, 10, "the warm-up connection ends")
    baseline = _greenlets()
    clients = [_join(server, "/hold")[0] for _ in range(20)]
    assert _greenlets() >= baseline + 20  # a handler (and a ping and a writer) per connection
    for i, ws in enumerate(clients):
        if i % 2:
            _reset(ws)
        else:
            ws.close()
    _wait_for(lambda: not server.dispatcher("/hold").instances, 20, "every connection dropped")
    _wait_for(lambda: _greenlets() <= baseline, 30,
              f"the greenlet count back to {baseline} (now {_greenlets()})")


# -- coalescing visible: the counters at INFO -------------------------------------------------


def test_broadcaster_counters_logged_at_info_while_they_move(sbio_server, sbio_live_client,
                                                             caplog):
    caplog.set_level(logging.INFO, logger="sbio.live")
    server = sbio_server(Ticker, config=_config(broadcaster={"metrics_log_interval": 0.2}))
    a = sbio_live_client(server, "/ticker")
    sub = a.subscribe("tick")
    for _ in range(3):
        n = a.call("bump")
        assert sub.wait_update(timeout=10) == n

    def lines():
        return [r.getMessage() for r in caplog.records
                if r.name == "sbio.live" and r.getMessage().startswith("broadcaster /ticker:")]
    _wait_for(lambda: lines(), 10, "a metrics line")
    assert all(r.levelno == logging.INFO for r in caplog.records
               if r.getMessage().startswith("broadcaster /ticker:"))
    text = " ".join(lines())
    for word in ("runs", "coalesced", "pushes", "queue depth"):
        assert word in text, text
    total_runs = sum(int(line.split(" runs")[0].rsplit(" ", 1)[-1]) for line in lines())
    assert total_runs == server.live.broadcaster("/ticker").metrics["reruns"] == 3
    # quiet namespace: no more lines
    count = len(lines())
    gevent.sleep(1.0)
    assert len(lines()) == count
    reporter = server.live._reporter
    assert reporter is not None and not reporter.dead
    server.stop(timeout=5)
    assert reporter.dead  # the server owns it: stopped with the server


def test_metrics_log_interval_zero_logs_nothing_and_starts_no_greenlet(sbio_server):
    server = sbio_server(Ticker, config=_config(broadcaster={"metrics_log_interval": 0}))
    assert server.live._reporter is None



# -- what "coalesced" counts ---------------------------------------------------------------

GATE = {"n": 0, "hold": False}


class Gated(Namespace):
    name = "/gated"

    @subscribes("g")
    def on_value(self):
        if GATE["hold"]:
            GATE["hold"] = False
            GATE["entered"].set()
            GATE["release"].wait(10)
        return GATE["n"]


def test_coalesced_counts_the_runs_folded_together(sbio_server, sbio_live_client):
    from sbio import notify

    GATE.update(n=0, hold=False, entered=gevent.event.Event(), release=gevent.event.Event())
    server = sbio_server(Gated, config=_config())
    metrics = server.live.broadcaster("/gated").metrics
    client = sbio_live_client(server, "/gated")
    sub = client.subscribe("value")
    assert metrics["coalesced"] == 0
    # notified twice before its cycle ran: one run for both
    GATE["n"] = 1
    notify("g")
    notify("g")
    assert sub.wait_update(timeout=10) == 1
    _wait_for(lambda: metrics["reruns"] == 1, 10, "one run")
    assert metrics["coalesced"] == 1
    # notified while running: one more run when done, deferred, not coalesced ...
    GATE.update(n=2, hold=True)
    cycles = metrics["cycles"]
    notify("g")
    assert GATE["entered"].wait(10)
    GATE["n"] = 3
    notify("g")
    _wait_for(lambda: metrics["cycles"] == cycles + 2, 10, "the second cycle")
    assert metrics["coalesced"] == 1
    # ... but a third notification while that run is due folds into it
    GATE["n"] = 4
    notify("g")
    _wait_for(lambda: metrics["cycles"] == cycles + 3, 10, "the third cycle")
    assert metrics["coalesced"] == 2
    GATE["release"].set()
    assert sub.wait_update(timeout=10) == 4
    _wait_for(lambda: metrics["reruns"] == 3, 10, "the gated run and the one due after it")
    assert metrics["coalesced"] == 2
