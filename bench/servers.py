"""Benchmark servers with one contract, so the same load can be aimed at each.

    python bench/servers.py bare|sbio --port P [--host 127.0.0.1] [--tcp-nodelay on|off]

Contract (namespace ``/bench``):

* ``echo(payload)`` acks ``{"ok": True, "data": payload}``;
* ``fanout(payload)`` broadcasts event ``fan`` with ``payload`` to every
  connection of the namespace, then acks ``{"ok": True, "data": None}``;
* sbio only, once sbio has live data (``sbio.subscribes``): ``bump({seq, t})`` stores the tick and
  notifies channel ``tick``; ``tick_shared`` (``@subscribes("tick",
  shared=True)``) and ``tick_private`` (``@subscribes("tick")``) return it;
* sbio only, the board (issue 15): ``board_shared`` (``@subscribes("board",
  shared=True)``) returns ``{seq, t, cards}``, 500 cards of about 140 bytes
  of JSON each; ``bump_board({seq, t})`` stores the tick, changes one card
  (card ``seq % 500`` moves to the next column) and notifies ``board``.

``bare`` is idiomatic python-socketio on gevent + gevent-websocket, the floor
sbio is compared against; ``sbio`` is the same contract written as an
``sbio.Namespace``. ``bench/node_server.js`` is the Node socket.io
reference with the same contract.

``--tcp-nodelay`` (default ``on``, sbio's default) sets ``TCP_NODELAY`` on
the accepted sockets of either server, so the comparison stays apples to
apples: for ``sbio`` it is the ``server.tcp_nodelay`` setting, for ``bare``
the same ``setsockopt`` in the handler (plain python-socketio on
gevent-websocket does not set it; Node's ws does). ``off`` leaves Nagle's
algorithm on for both.

The ``sbio`` server reads sbio's configuration as ``sbio run`` does, so
``SBIO_SERVER__MESSAGE_QUEUE=redis://...`` and ``SBIO_CLUSTER__PREFIX=...``
in its environment make it one process of a cluster (``bench/run.py``'s
cluster group starts two like that).

``--stats-file PATH`` (sbio only, for ``bench/run.py --soak``): on SIGUSR1
the server appends one JSON line of its own counters to PATH (see
``sbio_stats``) and logs the broadcaster's counters at INFO.

The process prints ``listening <host>:<port>`` on stdout once the socket is
bound; ``bench/run.py`` waits for the port itself, the line is for humans.
Logging is kept quiet (warnings only) so it costs no CPU under load.
SIGTERM / SIGINT stop the server and exit 0.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

# Run from a checkout: `python bench/servers.py sbio` uses this repository's sbio.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

NAMESPACE = "/bench"


def _quiet_logging():
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    for name in ("socketio", "engineio", "socketio.server", "engineio.server", "geventwebsocket"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _stop_on_signals(stop):
    # gevent runs the handler in a greenlet of the hub, so stopping the
    # server from it is safe; serve_forever() then returns.
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop)


# --------------------------------------------------------------------------
# bare: plain python-socketio, the reference
# --------------------------------------------------------------------------
def serve_bare(host, port, tcp_nodelay=True):
    import socketio
    from gevent import pywsgi
    from geventwebsocket.handler import WebSocketHandler

    class Handler(WebSocketHandler):
        # What sbio does with server.tcp_nodelay (sbio/server.py): once per
        # accepted connection, before the first request is read.
        def handle(self):
            if tcp_nodelay:
                with contextlib.suppress(OSError):
                    self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return super().handle()

    sio = socketio.Server(async_mode="gevent", logger=False, engineio_logger=False)

    @sio.on("echo", namespace=NAMESPACE)
    def echo(sid, payload):
        return {"ok": True, "data": payload}

    @sio.on("fanout", namespace=NAMESPACE)
    def fanout(sid, payload):
        sio.emit("fan", payload, namespace=NAMESPACE)
        return {"ok": True, "data": None}

    app = socketio.WSGIApp(sio)
    server = pywsgi.WSGIServer((host, port), app, handler_class=Handler, log=None)
    server.start()
    print(f"listening {host}:{server.server_port}", flush=True)
    _stop_on_signals(lambda: server.stop(timeout=1))
    server.serve_forever()


# --------------------------------------------------------------------------
# sbio: the same contract as an sbio.Namespace
# --------------------------------------------------------------------------
def sbio_available():
    """True when the sbio core runtime (``sbio.Server``, ``sbio.Namespace``) is importable."""
    try:
        import sbio
    except Exception:
        return False
    return hasattr(sbio, "Server") and hasattr(sbio, "Namespace")


def sbio_live_api():
    """(subscribes, notifies) from sbio's public API, or None before sbio has live data."""
    if not sbio_available():
        return None
    import sbio

    if hasattr(sbio, "subscribes") and hasattr(sbio, "notifies"):
        return sbio.subscribes, sbio.notifies
    return None


def sbio_namespace():
    """The benchmark contract as an sbio.Namespace (plus the live-data handlers when sbio
    has them)."""
    import sbio

    live = sbio_live_api()
    # Live-data contract (issue 3): `bump({seq, t})` stores the tick and
    # notifies channel "tick"; `tick_shared` (shared=True: computed once per
    # notify, the same packet to every subscriber) and `tick_private` (re-run
    # for each subscribed connection) return the current tick.
    tick = {"seq": -1, "t": None}
    # The board (issue 15): 500 cards, one of which changes per bump_board.
    columns = ["To do", "Doing", "Review", "Done"]
    board = {"seq": -1, "t": None, "cards": [
        {"id": f"{i:08x}-7e57-4c0d-9a11-{i:012x}", "column": columns[i % 4],
         "title": f"Card {i}: something to do on the board", "author": "ann",
         "created": "2024-05-01T12:00:00+00:00", "rev": 0} for i in range(500)]}

    class Bench(sbio.Namespace):
        name = NAMESPACE

        def on_echo(self, payload):
            return payload  # sbio wraps it: {"ok": true, "data": payload}

        def on_fanout(self, payload):
            self.broadcast("fan", payload)  # every connection of the namespace

        if live:
            subscribes, notifies = live

            @subscribes("tick", shared=True)
            def on_tick_shared(self):
                return dict(tick)

            @subscribes("tick")
            def on_tick_private(self):
                return dict(tick)

            @notifies("tick")
            def on_bump(self, new_tick):
                tick.update(seq=new_tick["seq"], t=new_tick["t"])

            @subscribes("board", shared=True)
            def on_board_shared(self):
                return board

            @notifies("board")
            def on_bump_board(self, new_tick):
                seq = new_tick["seq"]
                cards = list(board["cards"])  # a new list: the last result stays as it was
                card = dict(cards[seq % len(cards)])
                card["column"] = columns[(columns.index(card["column"]) + 1) % len(columns)]
                card["rev"] = seq
                cards[seq % len(cards)] = card
                board.update(seq=seq, t=new_tick["t"], cards=cards)

    return Bench


def sbio_stats(server):
    """What the soak samples inside the sbio server (``--stats-file``; bench only).

    Counted after a full ``gc.collect()``, so what is counted is what is
    still referenced: greenlets (every ``greenlet.greenlet`` object, the
    hub's included), ``sbio.Namespace`` instances, the live-data registries
    and counters of ``/bench``, the Engine.IO sockets, the connections the
    WSGI server handles and its websocket registry.
    """
    import gc

    import greenlet

    import sbio

    collected = gc.collect()
    greenlets = instances = objects = 0
    for obj in gc.get_objects():
        objects += 1
        if isinstance(obj, greenlet.greenlet):
            greenlets += 1
        elif isinstance(obj, sbio.Namespace):
            instances += 1
    broadcaster = server.live.broadcaster(NAMESPACE)
    wsgi = server._wsgi_server  # the bench reads the server's own listener
    return {
        "t": time.time(),
        "greenlets": greenlets,
        "namespace_instances": instances,
        "connections": len(server.dispatcher(NAMESPACE).instances),
        "subscriptions": broadcaster.subscription_count(),
        "registries": broadcaster.registry_sizes(),
        "broadcaster": dict(broadcaster.metrics),
        "engineio_sockets": len(server.sio.eio.sockets),
        "tcp_connections": getattr(wsgi, "connections", None),
        "websocket_registry": len(getattr(wsgi, "clients", None) or ()),
        "gc_objects": objects,
        "gc_collected": collected,
        "ping_interval": float(server.config["server"]["ping_interval"]),
    }


def serve_sbio(host, port, tcp_nodelay=True, stats_file=None):
    import sbio
    from sbio.config import load_sbio_config

    config = load_sbio_config(overrides={"server.tcp_nodelay": tcp_nodelay})
    server = sbio.Server(namespaces=[sbio_namespace()], config=config, host=host, port=port)
    if stats_file:
        # bench only: SIGUSR1 appends one JSON line of sbio_stats() to the file
        # (bench/run.py --soak); the broadcaster's counters go to the log at INFO
        logging.getLogger("sbio.live").setLevel(logging.INFO)

        def dump_stats():
            try:
                line = json.dumps(sbio_stats(server))
            except Exception as exc:  # reported to the runner, not raised into gevent
                line = json.dumps({"t": time.time(), "error": repr(exc)})
            with open(stats_file, "a") as f:
                f.write(line + "\n")

        gevent.signal_handler(signal.SIGUSR1, dump_stats)
    server.start()
    print(f"listening {host}:{port}", flush=True)
    _stop_on_signals(lambda: server.stop(1))
    server.serve_forever()


# Server kinds. The live-data scenarios (issue 3) run on sbio only; their raw
# comparison is `fanout` on bare at the same size and rate.
SERVERS = {
    "bare": serve_bare,
    "sbio": serve_sbio,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tcp-nodelay", choices=("on", "off"), default="on",
                        help="TCP_NODELAY on accepted sockets "
                             "(default on, as sbio's server.tcp_nodelay)")
    parser.add_argument("--stats-file",
                        help="sbio only: on SIGUSR1 append a JSON line of server counters "
                             "(greenlets, Namespace instances, subscriptions, ...) to this file")
    args = parser.parse_args(argv)
    _quiet_logging()
    extra = {"stats_file": args.stats_file} if args.stats_file else {}
    if extra and args.kind != "sbio":
        parser.error("--stats-file is for the sbio server")
    SERVERS[args.kind](args.host, args.port, tcp_nodelay=args.tcp_nodelay == "on", **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
