"""The soak of bench/run.py (issue 18), one minute and 200 clients: counts, never times.

``python bench/run.py --soak 30`` is the real one (1,000 clients, half an
hour; see docs/benchmarks.md). This runs the same code path small: a real
sbio bench server in a subprocess, the Node generator (socket.io-client)
subscribing 200 connections (half to a per-connection handler, half to a
shared one), 10 notifies per second, 20 connections dropped (half cleanly,
half by a TCP reset) and 20 opened every second. It checks that every
client ends on the last value, no update came out of order, nothing failed
or logged a traceback, the registries never grew past the population, and
that after every client closed the server's greenlets and Namespace
instances are back to the baseline (its ping_interval is set far above the
wait, so a greenlet sleeping out a closed socket's ping fails it).

Skipped without node (a failure under SBIO_REQUIRE_SERVICES=1); runs
``npm ci`` in bench/ when bench/node_modules is missing.
"""
import importlib.util
import os
import shutil

import pytest

from sbio.testing import missing_service

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = 200
CHURN = 20


def _load_runner():
    spec = importlib.util.spec_from_file_location("sbio_bench_run_soak",
                                                  os.path.join(REPO_ROOT, "bench", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_runner()



@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    if not shutil.which("node"):
        missing_service("node (the load generator needs Node.js)")
    why = bench.ensure_node_modules(quiet=True)
    if why:
        missing_service(f"bench/node_modules ({why})")
    why = bench._live_missing()
    if why:
        pytest.skip(f"sbio live data not benchmarkable: {why}")
    env = {"SBIO_SERVER__PING_INTERVAL": "120",  # far above the settle wait below
           "SBIO_BROADCASTER__METRICS_LOG_INTERVAL": "10"}
    result = bench.run_soak(1.0, clients=CLIENTS, churn=CHURN, rate=10, sample_interval=10,
                            log_dir=str(tmp_path_factory.mktemp("soak")), server_env=env,
                            settle_timeout=60, quiet=True)
    assert "error" not in result, (result.get("error"), result.get("server_log"))
    return result


def test_every_client_ends_on_the_final_value_in_order(soak):
    checks = soak["loadgen"]["checks"]
    assert checks["clients_at_end"] == CLIENTS, checks
    assert checks["on_final_value"] == CLIENTS and checks["lagging_after_drain"] == 0, checks
    assert checks["max_last_seen"] == checks["final_seq"], checks
    for handler in ("tick_private", "tick_shared"):
        by = checks["by_handler"][handler]
        assert by["clients"] == by["on_final"] == CLIENTS // 2, checks["by_handler"]
    assert checks["stale"] == 0, checks  # every client's ticks strictly increase
    for key in ("connect_errors", "subscribe_errors", "update_errors", "unexpected_disconnects",
                "bump_errors", "bad_acks"):
        assert checks[key] == 0, (key, checks["errors_seen"])
    assert checks["acked"] == checks["bumps"] > 0, checks
    assert checks["ok"], checks


def test_connections_churned_both_ways(soak):
    checks = soak["loadgen"]["checks"]
    # about 20 a second for 60 s; half of that leaves room for a loaded machine
    assert checks["churned"] >= CHURN * 30, checks
    assert checks["connects"] == CLIENTS + checks["churned"], checks
    assert abs(checks["dropped_clean"] - checks["dropped_reset"]) <= 1, checks


def test_server_log_has_no_traceback_and_shows_the_counters(soak):
    log = soak["server_log"]
    assert log["tracebacks"] == 0 and log["gevent_failures"] == 0, log["first_problems"]
    assert log["error_lines"] == 0, log["first_problems"]
    assert log["metrics_lines"] >= 1, log  # the broadcaster's INFO line, every 10 s here
    assert " coalesced, " in log["last_metrics_line"], log


def test_registries_stay_within_the_population(soak):
    samples = [s for s in soak["samples"] if s["phase"] in ("soak", "soak-end")]
    assert len(samples) >= 4, [s["phase"] for s in soak["samples"]]
    for s in samples:
        server = s["server"]
        assert "error" not in server, server
        assert server["subscriptions"] <= CLIENTS, server
        # the population, the driver, and the connections of one churn in flight
        assert server["namespace_instances"] <= CLIENTS + 1 + 2 * CHURN, server
        assert server["registries"]["connections"] <= CLIENTS, server
        assert server["websocket_registry"] <= CLIENTS + 1 + 2 * CHURN, server


def test_counts_back_to_baseline_after_every_client_closed(soak):
    base, after = soak["baseline"], soak["after_close"]
    assert base["settled"], base
    assert after["back_to_baseline"], (base, after)
    assert after["namespace_instances"] == 0 and after["subscriptions"] == 0, after
    assert after["greenlets"] <= base["greenlets"], (base, after)
    assert after["engineio_sockets"] == 0 and after["websocket_registry"] == 0, after
    summary = soak["summary"]
    assert summary["ok"], summary
