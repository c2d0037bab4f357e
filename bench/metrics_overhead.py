"""What ``[metrics] enabled`` adds to one event: a micro-benchmark of the dispatch path.

    python bench/metrics_overhead.py [--events N] [--rounds R]

Calls ``NamespaceDispatcher.handle_event`` (and ``admit``, as the adapter
does before it) for an echo handler on one connected in-process instance,
with metrics disabled and enabled, and prints the nanoseconds per event of
each and their difference: the cost of the wrappers sbio.ops.metrics puts on
the dispatcher (two clock reads, the outcome count, the histogram bucket).
CPU time of one process, best of R rounds; for a number a busy machine
cannot blur, compare ``SBIO_METRICS__ENABLED=true python bench/instructions.py
--scenarios echo-50 --servers sbio`` with the same command without it.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_event_ns(enabled, events, rounds):
    import sbio
    from sbio.config import load_sbio_config
    from sbio.testing import LocalClient

    class Echo(sbio.Namespace):
        name = "/echo"

        def on_echo(self, x):
            return x

    config = load_sbio_config(overrides={"server.port": 0, "server.secret_key": "bench",
                                         "metrics.enabled": enabled})
    server = sbio.Server([Echo], config=config)
    client = LocalClient(server, "/echo")
    dispatcher = server.dispatcher("/echo")
    sid = client.sid
    instance = dispatcher.instances[sid]
    guard = instance._sbio_guard
    handle_event, admit = dispatcher.handle_event, dispatcher.admit
    args = [1]
    best = None
    for _ in range(rounds):
        started = time.process_time_ns()
        for _ in range(events):
            admit(instance, "echo", guard)
            handle_event(sid, "echo", args)
        elapsed = time.process_time_ns() - started
        best = elapsed if best is None else min(best, elapsed)
    client.disconnect()
    server.stop()
    return best / events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    off = per_event_ns(False, opts.events, opts.rounds)
    on = per_event_ns(True, opts.events, opts.rounds)
    print(f"metrics disabled: {off:8.0f} ns/event")
    print(f"metrics enabled:  {on:8.0f} ns/event")
    print(f"added:            {on - off:8.0f} ns/event ({(on - off) / off:.0%} of this path; "
          "the whole echo ack, socket to socket, is ~20-50x longer)")


if __name__ == "__main__":
    main()
