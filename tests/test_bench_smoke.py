"""Smoke test of the benchmark machinery (bench/), at tiny size.

Runs the real Node load generator against the real benchmark servers through
bench/run.py's own code path (server subprocess, stdin handshake, CPU
sampling) and checks counts only: every ack came back, every receiver got
every broadcast. Never timing.

Skipped when node is missing (a failure instead with SBIO_REQUIRE_SERVICES=1);
runs `npm ci` in bench/ when bench/node_modules is missing. The cluster test
(two sbio processes on one Redis) also needs the local Redis (the
`redis_url` fixture: skipped without it, a failure under
SBIO_REQUIRE_SERVICES=1).
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from sbio.testing import missing_service

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO_ROOT, "bench")


def _load_runner():
    spec = importlib.util.spec_from_file_location("sbio_bench_run",
                                                  os.path.join(BENCH_DIR, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_runner()



@pytest.fixture(scope="module")
def node_ready():
    if not shutil.which("node"):
        missing_service("node (the load generator needs Node.js)")
    why = bench.ensure_node_modules(quiet=True)
    if why:
        missing_service(f"bench/node_modules ({why})")


SERVERS = ["bare", "sbio"]


def _require_server(server):
    if server == "sbio":
        why = bench._sbio_missing()
        if why:
            pytest.skip(f"sbio server not benchmarkable yet: {why}")


def _run(server, name, loadgen, args, tmp_path, duration=1.0, warmup=0.3, timeout=60, **options):
    scn = bench.Scenario(name, loadgen, args, "ops", "smoke", timeout=timeout)
    opts = argparse.Namespace(duration=duration, warmup=warmup, **options)
    result = bench.run_one(scn, server, opts, log_dir=str(tmp_path))
    assert "loadgen" in result, result.get("error") or result
    return result


@pytest.mark.parametrize("server", SERVERS)
def test_echo_every_ack_returns(server, node_ready, tmp_path):
    _require_server(server)
    r = _run(server, "smoke-echo", "echo", {"clients": 2}, tmp_path)
    checks = r["loadgen"]["checks"]
    assert checks["sent"] > 0
    assert checks["acked"] == checks["sent"], checks
    assert checks["bad_acks"] == 0 and checks["errors"] == 0, checks
    assert r["ok"], r.get("error")
    measure = r["loadgen"]["measure"]
    assert measure["ops"] == measure["counts"]["sent"] == measure["latency_ms"]["n"]
    assert r["server_cpu_s"] >= 0 and r["cpu_us_per_op"] is not None


@pytest.mark.parametrize("server", SERVERS)
def test_fanout_every_receiver_gets_every_broadcast(server, node_ready, tmp_path):
    _require_server(server)
    receivers = 5
    r = _run(server, "smoke-fanout", "fanout",
             {"receivers": receivers, "window": 2, "count": 20}, tmp_path)
    checks = r["loadgen"]["checks"]
    assert checks["broadcasts"] > 0
    assert checks["acked"] == checks["broadcasts"], checks
    assert checks["receivers_complete"] == receivers, checks
    assert checks["min_per_receiver"] == checks["max_per_receiver"] == checks["broadcasts"], checks
    assert checks["deliveries"] == checks["broadcasts"] * receivers, checks
    assert checks["unknown"] == 0 and checks["stuck_after_drain"] == 0, checks
    measure = r["loadgen"]["measure"]
    assert 0 < measure["broadcasts"] <= 20  # --count bounds the measured phase
    assert measure["ops"] == measure["broadcasts"] * receivers
    assert r["ok"], r.get("error")


def test_slow_consumer_is_dropped_and_every_receiver_gets_every_broadcast(node_ready, tmp_path):
    """The slow-consumer scenario, small: one never-reading connection in a fan-out."""
    _require_server("sbio")
    real = bench.SCENARIOS["slow-consumer"]
    receivers = 5
    scn = bench.Scenario("smoke-slow-consumer", "fanout",
                         {"receivers": receivers, "window": 4, "payload_size": 4000, "slow": 1,
                          "drop_timeout": 30},
                         "deliveries", "smoke", servers=("sbio",), timeout=90,
                         server_env={"SBIO_SERVER__MAX_OUTBOUND_BYTES": "200000"}, check=real.check)
    opts = argparse.Namespace(duration=1.0, warmup=0.3)
    r = bench.run_one(scn, "sbio", opts, log_dir=str(tmp_path))
    assert "loadgen" in r, r.get("error") or r
    checks = r["loadgen"]["checks"]
    assert checks["slow"]["consumers"] == 1 and checks["slow"]["dropped"] == 1, checks
    assert checks["receivers_complete"] == receivers, checks
    assert checks["deliveries"] == checks["broadcasts"] * receivers, checks
    assert checks["duplicates"] == 0 and checks["stuck_after_drain"] == 0, checks
    assert set(r["server_rss_kb_by_mark"]) >= {"connected", "measure-start", "measure-end",
                                               "after-drop"}
    assert r["server_rss_growth_kb"] <= bench.SLOW_RSS_BOUND_KB
    assert r["ok"], r.get("error")
    log_text = "".join((tmp_path / name).read_text() for name in os.listdir(tmp_path)
                       if name.startswith("server-"))
    assert log_text.count("dropping slow consumer") == 1, log_text[-2000:]


@pytest.mark.parametrize("handler", ["tick_shared", "tick_private"])
def test_live_every_subscriber_holds_the_last_tick(handler, node_ready, tmp_path):
    why = bench._live_missing()
    if why:
        pytest.skip(f"sbio live data not benchmarkable yet: {why}")
    subscribers = 5
    r = _run("sbio", "smoke-live", "live",
             {"receivers": subscribers, "rate": 20, "handler": handler}, tmp_path)
    checks = r["loadgen"]["checks"]
    assert checks["bumps"] > 0
    assert checks["acked"] == checks["bumps"], checks
    assert checks["bad_acks"] == 0 and checks["errors"] == 0, checks
    assert checks["update_errors"] == 0 and checks["stale"] == 0, checks
    assert checks["lagging_after_drain"] == 0, checks  # every subscriber got the last tick
    measure = r["loadgen"]["measure"]
    assert measure["notifies"] > 0
    assert 0 < measure["ops"] <= measure["notifies"] * subscribers  # coalescing may skip ticks
    assert r["ok"], r.get("error")


def test_live_board_delta_pushes_fewer_bytes_to_the_same_values(node_ready, tmp_path):
    why = bench._live_missing()
    if why:
        pytest.skip(f"sbio live data not benchmarkable yet: {why}")
    measures = {}
    for delta in (0, 1):
        r = _run("sbio", f"smoke-board-{delta}", "live",
                 {"receivers": 5, "rate": 10, "handler": "board_shared", "bump": "bump_board",
                  "delta": delta}, tmp_path)
        assert r["ok"], r.get("error")  # every subscriber ends with the last board
        measures[delta] = r["loadgen"]["measure"]
        assert measures[delta]["update_packets"] > 0
    assert measures[0]["patches"] == 0 < measures[1]["patches"]
    # the whole board is ~70 kB; a patch of one card and the tick, a few hundred bytes
    assert measures[0]["bytes_per_update"] > 50_000
    assert measures[1]["bytes_per_update"] < 5_000


def test_runner_cli_end_to_end(node_ready, tmp_path):
    """`python bench/run.py` with a tiny plan prints a summary with the bare server in it."""
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "run.py"), "--scenarios", "echo-1",
         "--servers", "bare", "--duration", "0.5", "--warmup", "0.2", "--rounds", "1",
         "--no-save", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    (row,) = [s for s in doc["summary"] if s["server"] == "bare"]
    assert row["scenario"] == "echo-1" and row["ok_rounds"] == 1, row


@pytest.mark.parametrize("server", ["sbio-redis", "sbio-redis-x2"])
def test_cluster_fanout_every_receiver_on_every_process_gets_every_broadcast_once(
        server, sbio_redis_url, node_ready, tmp_path):
    """Receivers split over two sbio processes sharing Redis (and, for reference,
    one process with the same message queue): the driver's broadcasts on the
    first process reach every receiver of both, each exactly once."""
    why = bench._sbio_missing()
    if why:
        pytest.skip(f"sbio server not benchmarkable yet: {why}")
    receivers = 6
    r = _run(server, "smoke-cluster-fanout", "fanout",
             {"receivers": receivers, "window": 2, "count": 20},
             tmp_path, redis_url=sbio_redis_url)
    processes = bench.SERVERS[server].processes
    assert r["processes"] == processes and len(r["ports"]) == processes
    checks = r["loadgen"]["checks"]
    assert checks["broadcasts"] > 0
    assert checks["acked"] == checks["broadcasts"], checks
    assert checks["duplicates"] == 0 and checks["unknown"] == 0, checks
    assert checks["min_per_receiver"] == checks["max_per_receiver"] == checks["broadcasts"], checks
    assert checks["deliveries"] == checks["broadcasts"] * receivers, checks
    assert checks["stuck_after_drain"] == 0, checks
    by_url = checks["by_url"]
    assert [u["url"] for u in by_url] == [f"http://127.0.0.1:{port}" for port in r["ports"]]
    for u in by_url:  # half of the receivers on each process, every one complete
        assert u["receivers"] == receivers // processes, by_url
        assert u["complete"] == u["receivers"], by_url
        assert u["deliveries"] == u["receivers"] * checks["broadcasts"], by_url
    assert r["ok"], r.get("error")
    assert len(r["server_cpu_s_by_process"]) == processes
    assert r["redis"]["prefix"].startswith("sbio-bench-")


def test_instructions_counts_the_measured_window(node_ready):
    # bench/instructions.py at its smallest: sbio under callgrind, 100 acks.
    # Checks that a count came back for exactly the operations asked for and
    # that it is plausible (an ack costs far more than 1,000 and far less than
    # 10 million instructions), never a time.
    if not shutil.which("valgrind"):
        missing_service("valgrind (bench/instructions.py needs it)")
    proc = subprocess.run([sys.executable, os.path.join(BENCH_DIR, "instructions.py"),
                           "--scenarios", "echo-1", "--servers", "sbio", "--count", "100",
                           "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["echo-1"]["sbio"]
    assert result["ops"] == 100
    assert 1_000 < result["instructions"] / result["ops"] < 10_000_000, result
