#!/usr/bin/env python3
"""Run the sbio benchmarks: the same Node socket.io-client load against each server.

    python bench/run.py                    # full run, ~4-5 minutes
    python bench/run.py --quick            # one short round, ~1 minute
    python bench/run.py --scenarios echo-50,fanout-1000 --duration 5 --rounds 5
    python bench/run.py --servers bare,sbio
    python bench/run.py --scenarios cluster  # the 2-process (Redis) group only
    python bench/run.py --tcp-nodelay off    # both Python servers without TCP_NODELAY
    python bench/run.py --soak 30            # the soak: 30 minutes of churn (see run_soak)

For each round, each scenario and each server (servers interleaved, their
order reversed every other round), the runner

1. starts the server in a fresh subprocess pinned to core 0
   (``taskset -c 0``) and waits until its port accepts connections;
2. starts ``node bench/loadgen.js --sync`` pinned to core 1 (when the machine
   has two cores or more);
3. when the generator prints ``#mark measure-start`` (connections open,
   warm-up done, nothing in flight), reads the server's CPU time and answers
   ``go``; the same at ``#mark measure-end`` (load stopped and drained).
   CPU time = the sum of ``/proc/<pid>/task/*/schedstat`` on-CPU time (ns
   resolution); utime + stime of ``/proc/<pid>/stat`` (10 ms ticks, all
   threads) is recorded too and used where schedstat is missing;
4. reads the generator's JSON result and stops the server.

Server CPU per operation = CPU time between the two marks / operations
completed between them (acks for echo, deliveries at receivers for
fan-out). The median over the rounds is reported, with the sbio/bare ratios
of CPU per operation and of throughput. Raw results go to
``bench/results/<timestamp>.json``.

The cluster group (``cluster-fanout-1000``) runs sbio as one process, as one
process with a Redis message queue, and as two processes sharing that Redis
with the receivers split over them; its CPU per delivery is that of every
sbio process, and separately that plus redis-server's own CPU time over the
same window. See "Two processes on one Redis" in docs/benchmarks.md.

Scenarios live in the SCENARIOS registry below; servers in SERVERS.
"""
import argparse
import datetime
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The Redis of the cluster group: db 14 (the tests use 15), a unique prefix per run.
DEFAULT_REDIS_URL = os.environ.get("SBIO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


# --------------------------------------------------------------------------
# Scenario registry
# --------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    loadgen: str  # scenario name in bench/loadgen.js's SCENARIOS
    args: dict  # extra loadgen options (--key value)
    unit: str  # what an operation is, plural: "acks", "deliveries", "updates"
    description: str
    servers: tuple = ()  # restrict to these servers; () = every available one
    requires: object = None  # callable() -> None, or the reason to skip this scenario
    timeout: float = 90  # hard limit of one generator run, seconds
    quick: bool = True  # part of --quick
    compare_to: tuple = None  # (scenario, server) whose CPU/op this one is compared with
    group: str = "main"  # "main" or "cluster"; --scenarios takes group names too
    server_env: dict = None  # extra environment of the sbio server processes (SBIO_* settings)
    # callable(result) -> None, or why the run failed (beyond loadgen's checks)
    check: object = None


SCENARIOS = {}


def scenario(*args, **kwargs):
    s = Scenario(*args, **kwargs)
    SCENARIOS[s.name] = s
    return s


for _c in (1, 50, 200):
    scenario(
        f"echo-{_c}",
        "echo",
        {"clients": _c},
        "acks",
        f"{_c} client(s), each a closed loop of echo(100-byte string) with an ack",
    )

# The window (broadcasts in flight, i.e. not yet acked and delivered to every
# receiver) is large enough to keep the server busy through the Nagle /
# delayed-ACK stalls of a server socket without TCP_NODELAY (measured: with a
# window of 1-4 a gevent-websocket server idles most of the time waiting for
# ACKs); latencies are therefore "under load", mostly queueing.
for _r, _w in ((100, 64), (1000, 16)):
    scenario(
        f"fanout-{_r}",
        "fanout",
        {"receivers": _r, "window": _w},
        "deliveries",
        f"{_r} receivers (the driver is one of them), {_w} broadcasts in flight; "
        f"server broadcasts `fan` to the namespace",
    )

# Live data (issue 3): 1,000 connections subscribed to one handler, a driver
# calling `bump` (which notifies) 10 times a second; one operation = one
# `sbio:update` received. Compared with the raw python-socketio broadcast of
# the same size at the same rate (fanout-1000-10hz on bare), per delivery.
@functools.cache
def _live_missing():
    """None when the sbio benchmark server has the live-data handlers, else why not."""
    why = _sbio_missing()
    if why:
        return why
    code = (f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import servers; "
            "sys.exit(0 if servers.sbio_live_api() else 3)")
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return "sbio live data (subscribes / notifies) not available yet"


scenario("fanout-1000-10hz", "fanout", {"receivers": 1000, "rate": 10, "window": 16}, "deliveries",
         "raw broadcast for the live-data comparison: 1000 receivers, 10 broadcasts/s",
         servers=("bare",), requires=_live_missing)
for _kind, _what in (("shared", "shared=True handler (computed once per notify)"),
                     ("private", "per-connection handler (re-run for each subscriber)")):
    scenario(f"live-{_kind}-1000", "live",
             {"receivers": 1000, "rate": 10, "handler": f"tick_{_kind}"},
             "updates", f"1000 subscribers of a {_what}; 10 notifies/s",
             servers=("sbio",), requires=_live_missing, compare_to=("fanout-1000-10hz", "bare"))


# Delta pushes (issue 15): a board of 500 cards (~70 kB of JSON), one card
# changing per notify, 1,000 subscribers of one shared handler; whole results
# against "delta": true subscribers (the first push whole, then JSON Patches
# the server makes once per notify for the group). One operation = one
# update received; bytes = the sbio:update packets' text, exact.
for _mode in ("whole", "delta"):
    scenario(f"live-board-1000-{_mode}", "live",
             {"receivers": 1000, "rate": 2, "window": 2, "handler": "board_shared",
              "bump": "bump_board", "delta": int(_mode == "delta")},
             "updates", f"1000 subscribers of a 500-card board (shared), one card changing per "
             f"notify, 2 notifies/s; {'JSON Patch' if _mode == 'delta' else 'whole'} pushes",
             servers=("sbio",), requires=_live_missing, timeout=180)


# Scale-out on Redis (issue 7): fanout-1000 with the 1000 receivers split over
# two sbio processes sharing a Redis (server.message_queue), against one
# process with the same Redis and one process without it, in one run. The
# driver (connection 0) is on process A; A delivers to its own receivers
# directly and publishes the broadcast on Redis, B delivers it to its own.
@functools.cache
def _cluster_missing():
    why = _sbio_missing()
    if why:
        return why
    code = "import sbio.cluster, redis"
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"sbio.cluster / the redis package not importable: {last}"
    try:
        RedisProbe(REDIS_URL[0]).info("server")
    except (OSError, ValueError) as exc:
        return f"Redis {_redact(REDIS_URL[0])} not usable: {exc}"
    return None


REDIS_URL = [DEFAULT_REDIS_URL]  # set from --redis by main()

scenario("cluster-fanout-1000", "fanout", {"receivers": 1000, "window": 16}, "deliveries",
         "fanout-1000 with the receivers split evenly over the server processes (round robin; "
         "the driver on the first); 16 broadcasts in flight",
         servers=("sbio", "sbio-redis", "sbio-redis-x2"), quick=False, group="cluster")


# Slow consumer (issue 11): fanout-100 with 8 kB payloads (the kernel's
# socket buffers take a few MB of a reader that stopped before the server's
# queue grows at all: large payloads get there within the drop timeout even
# on a loaded machine) plus one connection that joins the
# namespace and never reads again (it keeps its session with unsolicited
# PONGs). The sbio server runs with a small outbound bound; the checks: every
# real receiver gets every broadcast, the slow one is dropped (the fan-out
# goes on after the window until it is, up to --drop-timeout), and the
# server's RSS grows by less than SLOW_RSS_BOUND_KB from the connected,
# idle server to after the drop. The CPU/op is fan-out with a slow consumer
# in the room.
SLOW_MAX_OUTBOUND_BYTES = 1_000_000
SLOW_RSS_BOUND_KB = 64 * 1024  # the 1 MB queue bound, the payloads in flight, allocator slack


def _slow_consumer_check(result):
    rss = result.get("server_rss_kb_by_mark") or {}
    if "connected" not in rss or "after-drop" not in rss:
        return "no RSS samples at the connected / after-drop marks"
    peak = max(v for k, v in rss.items() if k != "connected")
    growth = peak - rss["connected"]
    result["server_rss_growth_kb"] = growth
    if growth > SLOW_RSS_BOUND_KB:
        return f"server RSS grew by {growth} kB (bound {SLOW_RSS_BOUND_KB} kB) with a slow consumer"
    return None


scenario("slow-consumer", "fanout",
         {"receivers": 100, "window": 16, "payload_size": 8000, "slow": 1, "drop_timeout": 30},
         "deliveries",
         "fanout-100 (8 kB payloads) with one more connection that never reads: it must be dropped "
         f"(server.max_outbound_bytes {SLOW_MAX_OUTBOUND_BYTES}), "
         "every receiver gets every broadcast, "
         f"server RSS grows < {SLOW_RSS_BOUND_KB // 1024} MB",
         servers=("sbio",), timeout=120,
         server_env={"SBIO_SERVER__MAX_OUTBOUND_BYTES": str(SLOW_MAX_OUTBOUND_BYTES)},
         check=_slow_consumer_check)


#: --scenarios takes these group names; a run without --scenarios runs DEFAULT_GROUPS
GROUPS = ("main", "cluster")
DEFAULT_GROUPS = ("main", "cluster")


# --------------------------------------------------------------------------
# Server registry
# --------------------------------------------------------------------------
def _python_server(kind):
    return lambda port, opts: [sys.executable, os.path.join(BENCH_DIR, "servers.py"), kind,
                               "--port", str(port),
                               "--tcp-nodelay", getattr(opts, "tcp_nodelay", "on")]


@functools.cache
def _sbio_missing(features=()):
    """None when `import sbio` has Server, Namespace and *features*, else why not."""
    names = ("Server", "Namespace", *features)
    code = (f"import sbio, sys; missing = [n for n in {names!r} if not hasattr(sbio, n)]; "
            "print(' '.join(missing)); sys.exit(3 if missing else 0)")
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    if proc.returncode == 3:
        missing = ", ".join("sbio." + n for n in proc.stdout.split())
        return f"{missing} not available yet"
    last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
    return f"import sbio failed: {last}"


def _node_server_missing():
    if not shutil.which("node"):
        return "node not found"
    if not os.path.isdir(os.path.join(BENCH_DIR, "node_modules", "socket.io")):
        return "bench/node_modules/socket.io missing (npm ci in bench/)"
    return None


@dataclass
class ServerKind:
    name: str
    command: object  # (port, opts) -> argv
    missing: object  # () -> None or reason
    optional: bool = False  # absent: skip quietly (not an error)
    # server processes, each on its own port; the generator splits its connections
    processes: int = 1
    # sbio processes share the Redis of --redis (a fresh prefix per run)
    message_queue: bool = False
    cluster: bool = False  # only for scenarios naming it (the cluster group)
    label: str = ""  # how the cluster table calls it


SERVERS = {
    "bare": ServerKind("bare", _python_server("bare"), lambda: None),
    "sbio": ServerKind("sbio", _python_server("sbio"), _sbio_missing, label="1 process"),
    "node": ServerKind(
        "node",
        lambda port, opts: ["node", os.path.join(BENCH_DIR, "node_server.js"), "--port", str(port)],
        _node_server_missing, optional=True),
    "sbio-redis": ServerKind("sbio-redis", _python_server("sbio"), _cluster_missing,
                             message_queue=True, cluster=True, label="1 process + Redis"),
    "sbio-redis-x2": ServerKind("sbio-redis-x2", _python_server("sbio"), _cluster_missing,
                                processes=2, message_queue=True, cluster=True,
                                label="2 processes + Redis"),
}


# --------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------
def _pythonpath():
    return os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)


def cpu_layout():
    """(server_cpus, loadgen_cpus): taskset core lists, or None where no pinning."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    if len(cpus) >= 2 and shutil.which("taskset"):
        return str(cpus[0]), str(cpus[1])
    return None, None


def pinned(argv, cpus):
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f}s")


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # the command name (field 2) may contain spaces: split after its ')'
    fields = data[data.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLK_TCK


def proc_sched_seconds(pid):
    """On-CPU time of a process in seconds with ns resolution: the sum over its
    threads of the first field of /proc/<pid>/task/<tid>/schedstat, or None
    where the kernel has no schedstat."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just exited
    return total / 1e9 if total else None


def system_busy_seconds():
    """CPU time all cores spent busy (not idle / iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def proc_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _redact(url):
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


class RedisProbe:
    """Just enough of the Redis protocol (stdlib only) to read ``INFO``: the
    server's pid (to sample its CPU time) and its command counter."""

    def __init__(self, url, timeout=2.0):
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "valkey"):
            raise ValueError(f"the benchmark reads Redis's INFO over plain TCP only, not {parts.scheme}://")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout

    @staticmethod
    def _command(*args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    @staticmethod
    def _reply(f):
        line = f.readline()
        if not line:
            raise OSError("Redis closed the connection")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"-":
            raise OSError(f"Redis: {rest.decode(errors='replace')}")
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:n].decode(errors="replace")
        return rest.decode(errors="replace")

    def info(self, section):
        address = (self.host, self.port)
        with socket.create_connection(address, timeout=self.timeout) as sock, \
                sock.makefile("rb") as f:
            if self.password:
                auth = (("AUTH", self.username, self.password) if self.username
                        else ("AUTH", self.password))
                sock.sendall(self._command(*auth))
                self._reply(f)
            sock.sendall(self._command("INFO", section))
            text = self._reply(f) or ""
        return dict(line.split(":", 1) for line in text.splitlines()
                    if ":" in line and not line.startswith("#"))

    def local_pid(self):
        """redis-server's pid when it runs on this machine (its /proc entry is a Redis),
        else None."""
        try:
            pid = int(self.info("server")["process_id"])
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except (OSError, KeyError, ValueError):
            return None
        return pid if ("redis" in comm or "valkey" in comm) else None

    def commands(self):
        """Commands Redis has processed since it started (INFO stats)."""
        try:
            return int(self.info("stats")["total_commands_processed"])
        except (OSError, KeyError, ValueError):
            return None


def stop_process(proc, timeout=1.0):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def stop_processes(procs, timeout=1.0):
    """stop_process for several at once: SIGTERM them all, then wait."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop_process(proc, timeout)


def _tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def ensure_node_modules(quiet=False):
    """`npm ci` in bench/ when node_modules is missing. Returns None or why it failed."""
    if os.path.isdir(os.path.join(BENCH_DIR, "node_modules", "socket.io-client")):
        return None
    npm = shutil.which("npm")
    if not npm:
        return "npm not found"
    if not quiet:
        print("installing bench/node_modules (npm ci) ...", file=sys.stderr, flush=True)
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BENCH_DIR,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return f"npm ci failed: {proc.stderr.strip()[-500:]}"
    return None


# --------------------------------------------------------------------------
# One measured run
# --------------------------------------------------------------------------
def _free_ports(n):
    ports = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _sum(values):
    return None if any(v is None for v in values) else sum(values)


def run_one(scn, server, opts, log_dir=None):
    """Start `server` (one process, or several sharing a Redis), run scenario `scn`
    against it, return the raw result dict."""
    server_cpus, loadgen_cpus = cpu_layout()
    kind = SERVERS[server]
    ports = _free_ports(kind.processes)
    env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1")
    redis = redis_pid = None
    redis_url = getattr(opts, "redis_url", None) or REDIS_URL[0]
    if kind.message_queue:
        # Pub/sub channels span Redis's databases: the fresh prefix keeps this
        # run's processes to themselves (and away from other runs and tests).
        env["SBIO_SERVER__MESSAGE_QUEUE"] = redis_url
        env["SBIO_CLUSTER__PREFIX"] = f"sbio-bench-{uuid.uuid4().hex[:12]}"
        redis = RedisProbe(redis_url)
        redis_pid = redis.local_pid()
    else:
        env["SBIO_SERVER__MESSAGE_QUEUE"] = ""  # whatever the caller's environment says
    env.update(scn.server_env or {})
    log_dir = log_dir or RESULTS_DIR
    os.makedirs(log_dir, exist_ok=True)
    log_paths = [os.path.join(log_dir, f"server-{server}-{scn.name}"
                              + (f"-{i}" if kind.processes > 1 else "") + ".log")
                 for i in range(kind.processes)]
    result = {"scenario": scn.name, "server": server, "unit": scn.unit,
              "port": ports[0], "ports": ports, "processes": kind.processes,
              "tcp_nodelay": (getattr(opts, "tcp_nodelay", "on") if kind.name != "node"
                              else "on (ws default)"),
              "pinning": {"server": server_cpus, "loadgen": loadgen_cpus}}
    if kind.message_queue:
        result["redis"] = {"url": _redact(redis_url), "prefix": env["SBIO_CLUSTER__PREFIX"],
                           "pid": redis_pid}
    srvs = []
    gen = None
    try:
        # Every process of one server kind on the server core(s): one or two
        # processes share the same CPU budget (see docs/benchmarks.md).
        for port, log_path in zip(ports, log_paths, strict=True):
            with open(log_path, "w") as log:
                srvs.append(subprocess.Popen(pinned(kind.command(port, opts), server_cpus),
                                             cwd=REPO_ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL))
        for port, srv in zip(ports, srvs, strict=True):
            wait_for_port(port, srv)
        argv = ["node", os.path.join(BENCH_DIR, "loadgen.js"),
                "--url", ",".join(f"http://127.0.0.1:{port}" for port in ports),
                "--scenario", scn.loadgen, "--sync",
                "--duration", str(opts.duration), "--warmup", str(opts.warmup),
                "--timeout", str(int(scn.timeout))]
        for key, value in scn.args.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        gen_log_path = os.path.join(log_dir, f"loadgen-{server}-{scn.name}.log")
        with open(gen_log_path, "w") as gen_log:  # a file, so stderr can never fill a pipe
            gen = subprocess.Popen(pinned(argv, loadgen_cpus), cwd=BENCH_DIR, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=gen_log, text=True, bufsize=1)
        # Watchdog: the generator bounds itself (--timeout); this is the belt to its braces.
        watchdog = threading.Timer(scn.timeout + 15, gen.kill)
        watchdog.start()
        marks = {}
        payload = None

        def sample():
            # The generator has drained its load: the servers are idle now.
            return {
                "redis_cmds": redis.commands() if redis is not None else None,
                "t": time.monotonic(),
                "stat": [proc_cpu_seconds(p.pid) for p in srvs],
                "sched": [proc_sched_seconds(p.pid) for p in srvs],
                "rss": [proc_rss_kb(p.pid) for p in srvs],
                "gen": proc_cpu_seconds(gen.pid),
                "busy": system_busy_seconds(),
                "redis": proc_sched_seconds(redis_pid) if redis_pid else None,
            }

        try:
            for line in gen.stdout:
                line = line.strip()
                if line.startswith("#mark "):
                    marks[line[6:]] = sample()
                    gen.stdin.write("go\n")
                    gen.stdin.flush()
                elif line.startswith("{"):
                    payload = json.loads(line)
            gen.wait(10)
        finally:
            watchdog.cancel()
        stderr = _tail(gen_log_path)
        for i, srv in enumerate(srvs):
            if srv.poll() is not None:
                raise RuntimeError(f"server{f' {i}' if len(srvs) > 1 else ''} exited with code "
                                   f"{srv.returncode} during the run")
        if payload is None:
            raise RuntimeError(f"loadgen printed no result (exit {gen.returncode}): "
                               f"{stderr.strip()[-500:]}")
        result["loadgen"] = payload
        if "error" in payload:
            raise RuntimeError(f"loadgen: {payload['error']}")
        if "measure-start" not in marks or "measure-end" not in marks:
            raise RuntimeError("loadgen gave no measure marks")
        a, b = marks["measure-start"], marks["measure-end"]
        m = payload["measure"]
        window = b["t"] - a["t"]
        stat_by_proc = [y - x for x, y in zip(a["stat"], b["stat"], strict=False)]
        sched_by_proc = [None if x is None or y is None else y - x
                         for x, y in zip(a["sched"], b["sched"], strict=False)]
        stat_cpu = sum(stat_by_proc)
        sched = _sum(sched_by_proc)
        # schedstat has ns resolution; utime+stime comes in 10 ms ticks. They
        # agree to within the tick (checked); use the precise one when present.
        cpu = sched if sched is not None else stat_cpu
        cpu_by_proc = sched_by_proc if sched is not None else stat_by_proc
        redis_cpu = ((b["redis"] - a["redis"]) if a["redis"] is not None and b["redis"] is not None
                     else None)
        # CPU the rest of the machine used meanwhile (other processes, the
        # kernel's softirq work not charged to ours): a noise indicator.
        other = max(0.0, (b["busy"] - a["busy"]) - cpu - (b["gen"] - a["gen"]) - (redis_cpu or 0.0))
        result.update({
            "ok": bool(payload.get("checks", {}).get("ok")),
            "ops": m["ops"],
            "ops_per_s": m["ops_per_s"],
            "p50_ms": m["latency_ms"]["p50"],
            "p99_ms": m["latency_ms"]["p99"],
            "window_s": round(window, 4),
            "server_cpu_s": round(cpu, 6),
            "server_cpu_s_by_process": [round(c, 6) for c in cpu_by_proc],
            "server_cpu_source": "schedstat" if sched is not None else "stat",
            "server_stat_cpu_s": round(stat_cpu, 4),
            "server_util": round(cpu / window, 3) if window > 0 else None,
            "cpu_us_per_op": round(cpu * 1e6 / m["ops"], 3) if m["ops"] else None,
            "server_rss_kb": _sum(b["rss"]),
            "server_rss_kb_by_mark": {name: _sum(mk["rss"]) for name, mk in marks.items()},
            "client_util": payload.get("client_cpu", {}).get("util"),
            "other_cpu": round(other / window, 3) if window > 0 else None,
        })
        if m.get("update_bytes") is not None:  # the live scenarios: exact bytes pushed
            notifies = m.get("notifies") or 0
            result.update({
                "delta": m.get("delta"),
                "update_bytes": m["update_bytes"],
                "bytes_per_op": m.get("bytes_per_update"),
                "patches": m.get("patches"),
                "notifies": notifies,
                "cpu_ms_per_notify": round(cpu * 1e3 / notifies, 3) if notifies else None,
            })
        if m.get("latency_ms_by_url"):
            result["p50_ms_by_process"] = [x["p50"] for x in m["latency_ms_by_url"]]
            result["p99_ms_by_process"] = [x["p99"] for x in m["latency_ms_by_url"]]
        if kind.message_queue:
            cmds = (b["redis_cmds"] - a["redis_cmds"]) if a["redis_cmds"] is not None and \
                b["redis_cmds"] is not None else None
            broadcasts = m.get("broadcasts")
            result.update({
                "redis_cpu_s": None if redis_cpu is None else round(redis_cpu, 6),
                "redis_util": (round(redis_cpu / window, 3)
                               if redis_cpu is not None and window > 0 else None),
                "cpu_us_per_op_with_redis": round((cpu + redis_cpu) * 1e6 / m["ops"], 3)
                if m["ops"] and redis_cpu is not None else None,
                # ~1 PUBLISH per broadcast (+1 for the INFO read at the end mark);
                # well above that, something else used this Redis in the window
                "redis_commands": cmds,
                "redis_commands_per_broadcast": (round(cmds / broadcasts, 2)
                                                 if cmds is not None and broadcasts else None),
            })
        elif kind.cluster or scn.group == "cluster":
            # no Redis involved: the per-delivery total is the server's own
            result.update({"redis_cpu_s": 0.0, "redis_util": 0.0,
                           "cpu_us_per_op_with_redis": result["cpu_us_per_op"]})
        if not result["ok"]:
            result["error"] = f"checks failed: {json.dumps(payload.get('checks'))}"
        elif scn.check is not None:
            problem = scn.check(result)
            if problem:
                result["ok"] = False
                result["error"] = problem
    except Exception as exc:  # one failed run must not sink the whole benchmark
        result["ok"] = False
        result.setdefault("error", str(exc))
        result["server_log_tail"] = "".join(_tail(p) for p in log_paths)
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait(5)
        stop_processes(srvs)
    return result


# --------------------------------------------------------------------------
# Aggregation and the table
# --------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs):
    """{(scenario, server): summary} with medians over the successful rounds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["scenario"], r["server"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        good = [r for r in rs if r.get("ok")]
        cpu = [r["cpu_us_per_op"] for r in good if r.get("cpu_us_per_op") is not None]
        out[key] = {
            "rounds": len(rs),
            "ok_rounds": len(good),
            "ops_per_s": _median([r["ops_per_s"] for r in good]),
            "p50_ms": _median([r["p50_ms"] for r in good]),
            "p99_ms": _median([r["p99_ms"] for r in good]),
            "cpu_us_per_op": _median(cpu),
            "cpu_us_per_op_range": [min(cpu), max(cpu)] if cpu else None,
            "server_util": _median([r["server_util"] for r in good]),
            "client_util": _median([r["client_util"] for r in good]),
            "other_cpu": _median([r.get("other_cpu") for r in good]),
            "server_rss_kb": _median([r["server_rss_kb"] for r in good]),
            "errors": [r["error"] for r in rs if r.get("error")],
        }
        if any("bytes_per_op" in r for r in rs):  # the live scenarios
            out[key].update({
                "bytes_per_op": _median([r.get("bytes_per_op") for r in good]),
                "cpu_ms_per_notify": _median([r.get("cpu_ms_per_notify") for r in good]),
                "patches": _median([r.get("patches") for r in good]),
            })
        if any("cpu_us_per_op_with_redis" in r for r in rs):  # the cluster group
            with_redis = [r["cpu_us_per_op_with_redis"] for r in good
                          if r.get("cpu_us_per_op_with_redis") is not None]
            out[key].update({
                "processes": rs[0].get("processes", 1),
                "cpu_us_per_op_with_redis": _median(with_redis),
                "cpu_us_per_op_with_redis_range": ([min(with_redis), max(with_redis)]
                                                   if with_redis else None),
                "redis_util": _median([r.get("redis_util") for r in good]),
                "redis_commands_per_broadcast": _median(
                    [r.get("redis_commands_per_broadcast") for r in good]),
                "p50_ms_by_process": [_median(xs) for xs in zip(
                    *[r["p50_ms_by_process"] for r in good if r.get("p50_ms_by_process")],
                    strict=False)] or None,
            })
    return out


def ratios(summary, scenario_names, runs=(), numerator="sbio", denominator="bare",
           key="cpu_us_per_op"):
    """Ratios of the medians, plus the range of the per-round (paired) CPU/op ratios
    (*key*: the CPU per operation compared)."""
    out = {}
    by_round = {}
    for r in runs:
        if r.get("ok") and r.get(key):
            by_round[(r["scenario"], r["server"], r.get("round"))] = r[key]
    for name in scenario_names:
        a, b = summary.get((name, numerator)), summary.get((name, denominator))
        if not a or not b or not a.get(key) or not b.get(key):
            continue
        paired = [by_round[(name, numerator, rnd)] / by_round[(name, denominator, rnd)]
                  for (scn, srv, rnd) in list(by_round)
                  if scn == name and srv == numerator and (name, denominator, rnd) in by_round]
        out[name] = {
            "cpu_per_op": round(a[key] / b[key], 3),
            "cpu_per_op_rounds": [round(x, 3) for x in paired],
            "throughput": round(a["ops_per_s"] / b["ops_per_s"], 3) if b["ops_per_s"] else None,
        }
    return out


def comparisons(summary, plan):
    """Rows for scenarios with `compare_to`: their CPU/op over the reference's CPU/op."""
    out = []
    for scn, scn_servers in plan:
        if not scn.compare_to:
            continue
        ref = summary.get(tuple(scn.compare_to))
        for server in scn_servers:
            s = summary.get((scn.name, server))
            if not s:
                continue
            ratio = None
            if ref and ref["cpu_us_per_op"] and s["cpu_us_per_op"]:
                ratio = round(s["cpu_us_per_op"] / ref["cpu_us_per_op"], 3)
            out.append({"scenario": scn.name, "server": server, "unit": scn.unit,
                        "cpu_us_per_op": s["cpu_us_per_op"],
                        "reference": "/".join(scn.compare_to),
                        "reference_unit": SCENARIOS[scn.compare_to[0]].unit,
                        "reference_cpu_us_per_op": ref["cpu_us_per_op"] if ref else None,
                        "ratio": ratio})
    return out


def format_comparisons(rows):
    header = ["scenario", "server", "CPU µs/op", "reference", "ref CPU µs/op", "ratio"]
    def per(unit):
        return unit[:-1] if unit != "deliveries" else "delivery"

    body = [[r["scenario"], r["server"], f'{_fmt(r["cpu_us_per_op"], ".1f")} per {per(r["unit"])}',
             r["reference"], f'{_fmt(r["reference_cpu_us_per_op"], ".1f")}',
             _fmt(r["ratio"], ".2f")]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in body])


def format_push_table(summary, keys):
    header = ["scenario", "server", "bytes/update", "patches", "CPU µs/update", "CPU ms/notify"]
    body = [[name, server, _fmt(summary[(name, server)]["bytes_per_op"], ",.0f"),
             _fmt(summary[(name, server)]["patches"], ",.0f"),
             _fmt(summary[(name, server)]["cpu_us_per_op"], ".1f"),
             _fmt(summary[(name, server)]["cpu_ms_per_notify"], ".2f")]
            for name, server in keys]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in body])


def _range(values):
    """' [lo-hi]' of the per-round ratios, when there are several."""
    if not values or len(values) < 2:
        return ""
    return f" [{min(values):.2f}-{max(values):.2f}]"


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(summary, scenario_names, server_names, rat):
    header = ["scenario", "server", "rate /s", "p50 ms", "p99 ms", "CPU µs/op", "srv CPU", "other",
              "sbio/bare CPU/op [rounds]", "sbio/bare rate"]
    rows = []
    for name in scenario_names:
        unit = SCENARIOS[name].unit
        for server in server_names:
            s = summary.get((name, server))
            if s is None:
                continue
            rr = rat.get(name, {}) if server == "sbio" else {}
            flag = ("" if s["ok_rounds"] == s["rounds"]
                    else f" ({s['rounds'] - s['ok_rounds']} failed)")
            rows.append([
                name, server + flag,
                (_fmt(s["ops_per_s"], ",.0f") + f" {unit}") if s["ops_per_s"] is not None else "-",
                _fmt(s["p50_ms"], ".2f"), _fmt(s["p99_ms"], ".2f"),
                _fmt(s["cpu_us_per_op"], ".1f"),
                _fmt(None if s["server_util"] is None else s["server_util"] * 100, ".0f") + "%",
                _fmt(None if s["other_cpu"] is None else s["other_cpu"] * 100, ".0f") + "%",
                ((_fmt(rr.get("cpu_per_op"), ".2f") + _range(rr.get("cpu_per_op_rounds")))
                 if rr else ""),
                _fmt(rr.get("throughput"), ".2f") if rr else "",
            ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def cluster_ratios(summary, scenario_names, runs):
    """{scenario: {server: {sbio, with_redis}}}: each setup's CPU per delivery over the
    1-process (no Redis) one, for the sbio CPU alone and with redis-server's CPU added."""
    out = {}
    for server, kind in SERVERS.items():
        if not kind.cluster:
            continue
        for name in scenario_names:
            alone = ratios(summary, [name], runs, server, "sbio").get(name)
            total = ratios(summary, [name], runs, server, "sbio",
                           key="cpu_us_per_op_with_redis").get(name)
            if alone or total:
                out.setdefault(name, {})[server] = {"sbio": alone, "with_redis": total}
    return out


def format_cluster_table(summary, scenario_names, server_names, crat):
    header = ["scenario", "setup", "rate /s", "p50 ms", "p99 ms", "sbio CPU µs/op",
              "sbio+Redis CPU µs/op", "sbio CPU", "Redis CPU", "other", "Redis cmds/bcast",
              "vs 1 process: sbio [rounds]",
              "vs 1 process: sbio+Redis [rounds]", "rate vs 1 process"]
    rows = []
    for name in scenario_names:
        unit = SCENARIOS[name].unit
        for server in server_names:
            s = summary.get((name, server))
            if s is None:
                continue
            rr = crat.get(name, {}).get(server) or {}
            alone, total = rr.get("sbio") or {}, rr.get("with_redis") or {}
            flag = ("" if s["ok_rounds"] == s["rounds"]
                    else f" ({s['rounds'] - s['ok_rounds']} failed)")
            p50 = _fmt(s["p50_ms"], ".2f")
            if s.get("p50_ms_by_process") and len(s["p50_ms_by_process"]) > 1:
                p50 += " (" + " / ".join(_fmt(x, ".1f") for x in s["p50_ms_by_process"]) + ")"
            pct = lambda v: _fmt(None if v is None else v * 100, ".0f") + "%"  # noqa: E731
            rows.append([
                name, (SERVERS[server].label or server) + flag,
                (_fmt(s["ops_per_s"], ",.0f") + f" {unit}") if s["ops_per_s"] is not None else "-",
                p50, _fmt(s["p99_ms"], ".2f"),
                _fmt(s["cpu_us_per_op"], ".1f"), _fmt(s.get("cpu_us_per_op_with_redis"), ".1f"),
                pct(s["server_util"]),
                (_fmt(None if s.get("redis_util") is None else s["redis_util"] * 100, ".1f") + "%")
                if SERVERS[server].message_queue else "-",
                pct(s["other_cpu"]),
                (_fmt(s.get("redis_commands_per_broadcast"), ".2f")
                 if SERVERS[server].message_queue else ""),
                ((_fmt(alone.get("cpu_per_op"), ".2f") + _range(alone.get("cpu_per_op_rounds")))
                 if alone else ""),
                ((_fmt(total.get("cpu_per_op"), ".2f") + _range(total.get("cpu_per_op_rounds")))
                 if total else ""),
                _fmt(alone.get("throughput"), ".2f") if alone else "",
            ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


# --------------------------------------------------------------------------
# Soak (issue 18): churn for MINUTES, memory and counts sampled
# --------------------------------------------------------------------------
#: goal of the second half's RSS slope, KiB per minute (either way)
SOAK_RSS_SLOPE_GOAL_KIB = 50.0


def server_stats(pid, path, timeout=30.0):
    """One line of the sbio bench server's own counters (servers.py --stats-file): it is
    asked with SIGUSR1 and appends a JSON line to *path*. None if none came in *timeout* s."""
    def count():
        try:
            with open(path) as f:
                return f.read().count("\n")
        except OSError:
            return 0
    before = count()
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() > before:
            with open(path) as f:
                return json.loads(f.read().splitlines()[before])
        time.sleep(0.02)
    return None


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def linear_slope(points):
    """Least-squares slope of [(x, y), ...]; None with fewer than two distinct x."""
    points = [(x, y) for x, y in points if x is not None and y is not None]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _settle(pid, path, done, timeout, interval=0.25):
    """Sample the server's counters until done(stats); (stats, seconds waited, reached)."""
    t0 = time.monotonic()
    stats = None
    while True:
        stats = server_stats(pid, path) or stats
        waited = time.monotonic() - t0
        if stats is not None and done(stats):
            return stats, waited, True
        if waited >= timeout:
            return stats, waited, False
        time.sleep(interval)


def _scan_log(path):
    """Tracebacks, errors and the broadcaster's INFO lines in the server's log."""
    out = {"tracebacks": 0, "gevent_failures": 0, "error_lines": 0, "first_problems": [],
           "metrics_lines": 0, "last_metrics_line": None}
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        problem = None
        if line.startswith("Traceback"):
            out["tracebacks"] += 1
            problem = line
        elif " failed with " in line:  # gevent's report of a greenlet that raised
            out["gevent_failures"] += 1
            problem = line
        elif " ERROR " in line or " CRITICAL " in line:
            out["error_lines"] += 1
            problem = line
        elif line.startswith("sbio.live INFO broadcaster "):
            out["metrics_lines"] += 1
            out["last_metrics_line"] = line.strip()
        if problem and len(out["first_problems"]) < 10:
            out["first_problems"].append(problem.strip()[:300])
    return out


def run_soak(minutes, clients=1000, churn=20, rate=10.0, sample_interval=None, log_dir=None,
             server_env=None, drain_timeout=60.0, settle_timeout=None, quiet=False):
    """The soak: churn against one sbio bench server for *minutes*; the result dict.

    *clients* subscribed connections (half tick_private, half tick_shared),
    *rate* notifies per second, *churn* connections dropped (half cleanly,
    half by a TCP reset) and as many opened per second. The server is
    sampled (RSS, open fds, CPU; greenlets, Namespace instances,
    subscriptions, broadcaster counters from its --stats-file) at every
    "#sample" of the generator, every *sample_interval* s (default: 60, or
    a sixth of a shorter run). After every connection closed, the counts
    must be back to the baseline (taken after a warm-up connection) within
    *settle_timeout* s (default: the server's ping_interval).
    """
    duration = float(minutes) * 60
    if sample_interval is None:
        sample_interval = min(60.0, max(5.0, duration / 6))
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    server_cpus, loadgen_cpus = cpu_layout()
    log_dir = log_dir or os.path.join(RESULTS_DIR, datetime.datetime.now().strftime(
        "soak-%Y%m%d-%H%M%S"))
    os.makedirs(log_dir, exist_ok=True)
    server_log = os.path.join(log_dir, "server.log")
    gen_log = os.path.join(log_dir, "loadgen.log")
    stats_path = os.path.join(log_dir, "server-stats.jsonl")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1",
               SBIO_SERVER__MESSAGE_QUEUE="")
    env.update(server_env or {})
    result = {"minutes": minutes, "clients": clients, "churn_per_s": churn, "rate": rate,
              "sample_interval_s": sample_interval, "log_dir": log_dir,
              "pinning": {"server": server_cpus, "loadgen": loadgen_cpus}, "samples": []}
    srv = gen = None
    try:
        with open(server_log, "w") as log:
            srv = subprocess.Popen(
                pinned([sys.executable, os.path.join(BENCH_DIR, "servers.py"), "sbio",
                        "--port", str(port), "--stats-file", stats_path], server_cpus),
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        wait_for_port(port, srv)
        argv = ["node", os.path.join(BENCH_DIR, "loadgen.js"), "--url", f"http://127.0.0.1:{port}",
                "--scenario", "soak", "--sync", "--clients", str(clients), "--churn", str(churn),
                "--rate", str(rate), "--duration", str(duration),
                "--sample-interval", str(sample_interval), "--window", "16",
                "--drain-timeout", str(drain_timeout), "--timeout", str(int(duration + 900))]
        with open(gen_log, "w") as glog:
            gen = subprocess.Popen(pinned(argv, loadgen_cpus), cwd=BENCH_DIR, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=glog, text=True, bufsize=1)
        watchdog = threading.Timer(duration + 960, gen.kill)
        watchdog.start()
        payload = None
        baseline = None
        cpu0 = proc_sched_seconds(srv.pid) or proc_cpu_seconds(srv.pid)
        last_cpu, last_t = cpu0, time.monotonic()

        def go():
            gen.stdin.write("go\n")
            gen.stdin.flush()

        try:
            for line in gen.stdout:
                line = line.strip()
                if line == "#mark baseline":
                    # the warm-up connection is gone: wait until the server let go of it
                    history = []

                    def settled(st, history=history):
                        history.append(st.get("greenlets"))
                        return (st.get("namespace_instances") == 0 and st.get("connections") == 0
                                and len(history) >= 3 and len(set(history[-3:])) == 1)
                    baseline, waited, ok = _settle(srv.pid, stats_path, settled, 60.0)
                    baseline = dict(baseline or {}, rss_kb=proc_rss_kb(srv.pid),
                                    fds=proc_fds(srv.pid), settled=ok, waited_s=round(waited, 2))
                    result["baseline"] = baseline
                    say(f"# soak: baseline {baseline.get('greenlets')} greenlets, "
                        f"{baseline.get('namespace_instances')} Namespace instances, "
                        f"{baseline['rss_kb'] / 1024:.1f} MB RSS")
                    go()
                elif line.startswith("#mark "):
                    go()
                elif line.startswith("#sample "):
                    client = json.loads(line[len("#sample "):])
                    now = time.monotonic()
                    cpu = proc_sched_seconds(srv.pid) or proc_cpu_seconds(srv.pid)
                    st = server_stats(srv.pid, stats_path) or {}
                    smp = {"phase": client.get("phase"), "t_s": client.get("t"),
                           "rss_kb": proc_rss_kb(srv.pid), "fds": proc_fds(srv.pid),
                           "cpu_s": round(cpu - cpu0, 3),
                           "cpu_util": round((cpu - last_cpu) / (now - last_t), 3)
                           if now > last_t else None,
                           "server": st, "client": client}
                    last_cpu, last_t = cpu, now
                    result["samples"].append(smp)
                    bm = st.get("broadcaster") or {}
                    say(f"# soak {smp['t_s']:7.1f}s {smp['phase']:<8} "
                        f"rss {smp['rss_kb'] / 1024:6.1f} MB  fds {smp['fds']}  "
                        f"cpu {(smp['cpu_util'] or 0) * 100:3.0f}%  "
                        f"greenlets {st.get('greenlets')}  "
                        f"instances {st.get('namespace_instances')}  "
                        f"subs {st.get('subscriptions')}  coalesced {bm.get('coalesced')}  "
                        f"clients {client.get('active')}  connects {client.get('connects')}")
                elif line.startswith("{"):
                    payload = json.loads(line)
                elif line.startswith("#"):
                    say(f"# soak loadgen: {line.lstrip('# ')}")
            gen.wait(30)
        finally:
            watchdog.cancel()
        if payload is None:
            raise RuntimeError(f"loadgen printed no result (exit {gen.returncode}): "
                               f"{_tail(gen_log).strip()[-500:]}")
        result["loadgen"] = payload
        if "error" in payload:
            raise RuntimeError(f"loadgen: {payload['error']}")
        if srv.poll() is not None:
            raise RuntimeError(f"server exited with code {srv.returncode} during the soak")
        # every connection is closed: counts back to the baseline within ping_interval
        base = result.get("baseline") or {}
        ping_interval = base.get("ping_interval") or 25.0

        def back(st):
            return (st.get("namespace_instances", 1) <= base.get("namespace_instances", 0)
                    and st.get("greenlets", 1 << 30) <= base.get("greenlets", 0)
                    and st.get("connections") == 0 and st.get("subscriptions") == 0
                    and st.get("engineio_sockets") == 0)
        after, waited, reached = _settle(srv.pid, stats_path, back,
                                         settle_timeout if settle_timeout else ping_interval)
        result["after_close"] = dict(after or {}, rss_kb=proc_rss_kb(srv.pid),
                                     fds=proc_fds(srv.pid), back_to_baseline=reached,
                                     seconds=round(waited, 2), ping_interval=ping_interval)
    except Exception as exc:
        result["error"] = str(exc)
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
            gen.wait(5)
        if srv is not None:
            stop_process(srv, timeout=5)
    result["server_log"] = _scan_log(server_log)
    result["summary"] = soak_summary(result)
    return result


def soak_summary(result):
    """The numbers of a soak: RSS slopes, counts, checks."""
    samples = [s for s in result.get("samples", []) if s.get("phase") in ("soak", "soak-end")]
    duration = result["minutes"] * 60
    pts = [(s["t_s"] / 60, s["rss_kb"]) for s in samples if s.get("rss_kb") is not None]
    first = [p for p in pts if p[0] * 60 <= duration / 2]
    second = [p for p in pts if p[0] * 60 >= duration / 2]
    slope1, slope2 = linear_slope(first), linear_slope(second)
    checks = (result.get("loadgen") or {}).get("checks") or {}
    base = result.get("baseline") or {}
    after = result.get("after_close") or {}
    log = result.get("server_log") or {}

    def span(key, src="server"):
        vals = [s[src].get(key) if src else s.get(key) for s in samples]
        vals = [v for v in vals if v is not None]
        return [min(vals), max(vals)] if vals else None

    bm = [s["server"].get("broadcaster") or {} for s in samples if s.get("server")]
    b0 = bm[0] if bm else {}
    b1 = (result.get("samples") or [{}])[-1].get("server", {}).get("broadcaster") or {}
    runs = b1.get("reruns", 0) - b0.get("reruns", 0)
    coalesced = b1.get("coalesced", 0) - b0.get("coalesced", 0)
    util = [s["cpu_util"] for s in samples[1:] if s.get("cpu_util") is not None]
    tracebacks = log.get("tracebacks", 0) + log.get("gevent_failures", 0)
    summary = {
        "minutes": result["minutes"],
        "clients": result["clients"],
        "connections_opened": checks.get("connects"),
        "churned": checks.get("churned"),
        "dropped_clean": checks.get("dropped_clean"),
        "dropped_reset": checks.get("dropped_reset"),
        "notifies": checks.get("bumps"),
        "updates_received": checks.get("updates"),
        "rss_mb_first_last": ([round(pts[0][1] / 1024, 1), round(pts[-1][1] / 1024, 1)]
                              if pts else None),
        "rss_slope_kib_per_min_first_half": None if slope1 is None else round(slope1, 1),
        "rss_slope_kib_per_min_second_half": None if slope2 is None else round(slope2, 1),
        "rss_slope_goal_kib_per_min": SOAK_RSS_SLOPE_GOAL_KIB,
        "greenlets_min_max": span("greenlets"),
        "namespace_instances_min_max": span("namespace_instances"),
        "subscriptions_min_max": span("subscriptions"),
        "fds_min_max": span("fds", None),
        "server_cpu_util_median": round(statistics.median(util), 3) if util else None,
        "broadcaster_runs": runs,
        "broadcaster_coalesced": coalesced,
        "coalesced_share": round(coalesced / (runs + coalesced), 3) if runs + coalesced else None,
        "final_value": f"{checks.get('on_final_value')}/{checks.get('clients_at_end')}",
        "stale_updates": checks.get("stale"),
        "errors": {k: checks.get(k) for k in ("connect_errors", "subscribe_errors",
                                                "update_errors", "unexpected_disconnects",
                                                "bump_errors", "bad_acks")},
        "tracebacks": tracebacks,
        "server_error_lines": log.get("error_lines", 0),
        "baseline": {k: base.get(k) for k in ("greenlets", "namespace_instances")},
        "after_close": {k: after.get(k) for k in ("greenlets", "namespace_instances",
                                                  "subscriptions", "engineio_sockets",
                                                  "websocket_registry")},
        "back_to_baseline_s": after.get("seconds") if after.get("back_to_baseline") else None,
        "ping_interval_s": after.get("ping_interval"),
        "metrics_log_lines": log.get("metrics_lines"),
        "last_metrics_log_line": log.get("last_metrics_line"),
    }
    summary["ok"] = bool(
        "error" not in result and checks.get("ok") and tracebacks == 0
        and after.get("back_to_baseline"))
    summary["rss_slope_ok"] = (None if slope2 is None
                               else abs(slope2) <= SOAK_RSS_SLOPE_GOAL_KIB)
    if "error" in result:
        summary["error"] = result["error"]
    return summary


def format_soak_summary(s):
    def f(v, spec=""):
        return "-" if v is None else format(v, spec)
    lines = [
        f"soak: {f(s['minutes'], 'g')} min, {s['clients']} clients, "
        f"{f(s['connections_opened'], ',')} connections opened, {f(s['churned'], ',')} churned "
        f"({f(s['dropped_clean'])} clean / {f(s['dropped_reset'])} reset incl. the final close), "
        f"{f(s['notifies'], ',')} notifies, {f(s['updates_received'], ',')} updates received",
        f"RSS {s['rss_mb_first_last']} MB; slope first half "
        f"{f(s['rss_slope_kib_per_min_first_half'])} KiB/min, second half "
        f"{f(s['rss_slope_kib_per_min_second_half'])} KiB/min "
        f"(goal ±{s['rss_slope_goal_kib_per_min']:g}: "
        f"{ {True: 'met', False: 'MISSED', None: 'n/a'}[s['rss_slope_ok']] })",
        f"during the soak: greenlets {s['greenlets_min_max']}, Namespace instances "
        f"{s['namespace_instances_min_max']}, subscriptions {s['subscriptions_min_max']}, "
        f"fds {s['fds_min_max']}, server CPU median {f(s['server_cpu_util_median'])}",
        f"broadcaster: {s['broadcaster_runs']} runs, {s['broadcaster_coalesced']} coalesced "
        f"(share {f(s['coalesced_share'])}); {f(s['metrics_log_lines'])} INFO metrics lines",
        f"final value: {s['final_value']} clients; stale (out of order) updates: "
        f"{s['stale_updates']}; errors {s['errors']}",
        f"server log: {s['tracebacks']} tracebacks, {s['server_error_lines']} ERROR lines",
        f"after the close: {s['after_close']} (baseline {s['baseline']}); back to baseline "
        f"in {f(s['back_to_baseline_s'])} s (ping_interval {f(s['ping_interval_s'], 'g')} s)",
        "OK" if s["ok"] else f"FAILED{': ' + s['error'] if s.get('error') else ''}",
    ]
    return "\n".join(lines)


def soak_main(opts):
    print(f"# soak: {opts.soak:g} min, {opts.soak_clients} clients, churn {opts.soak_churn}/s, "
          f"{opts.soak_rate:g} notifies/s", file=sys.stderr, flush=True)
    result = run_soak(opts.soak, clients=opts.soak_clients, churn=opts.soak_churn,
                      rate=opts.soak_rate, sample_interval=opts.soak_sample)
    if not opts.no_save:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, os.path.basename(result["log_dir"]) + ".json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"# raw results: {os.path.relpath(path, REPO_ROOT)}; server log in "
              f"{os.path.relpath(result['log_dir'], REPO_ROOT)}", file=sys.stderr)
    if opts.json:
        print(json.dumps(result["summary"], indent=1))
    else:
        print(format_soak_summary(result["summary"]))
    return 0 if result["summary"]["ok"] else 1


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description="sbio benchmarks: same load against bare "
                                            "python-socketio, sbio (and Node socket.io) "
                                            "in one run.")
    p.add_argument("--quick", action="store_true",
                   help="one short round, bare and sbio only (~1 minute)")
    p.add_argument("--scenarios", help="comma-separated scenarios or groups (" + ", ".join(GROUPS) +
                   "; default: " + ",".join(DEFAULT_GROUPS) + ") of: " + ", ".join(SCENARIOS))
    p.add_argument("--servers", help="comma-separated subset of: " + ", ".join(SERVERS))
    p.add_argument("--tcp-nodelay", choices=("on", "off"), default="on",
                   help="TCP_NODELAY on the Python servers' accepted sockets, bare and sbio alike "
                        "(default on, sbio's server.tcp_nodelay default; node always sets it)")
    p.add_argument("--redis", dest="redis_url", default=DEFAULT_REDIS_URL,
                   help="Redis of the cluster group "
                        "(default %(default)s, or $SBIO_BENCH_REDIS_URL); "
                        "each run uses a fresh [cluster] prefix")
    p.add_argument("--duration", type=float, help="measured seconds per run (default 3, quick 1)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1, quick 0.5)")
    p.add_argument("--rounds", type=int, help="rounds, median reported (default 3, quick 1)")
    p.add_argument("--no-save", action="store_true",
                   help="do not write bench/results/<timestamp>.json")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON instead of the table")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="run the soak instead (sbio only, loopback): MINUTES of churn with "
                        "memory and counts sampled; see docs/benchmarks.md")
    p.add_argument("--soak-clients", type=int, default=1000,
                   help="soak: subscribed connections (default %(default)s)")
    p.add_argument("--soak-churn", type=int, default=20,
                   help="soak: connections dropped and opened per second (default %(default)s)")
    p.add_argument("--soak-rate", type=float, default=10,
                   help="soak: notifies per second (default %(default)s)")
    p.add_argument("--soak-sample", type=float,
                   help="soak: seconds between samples (default 60, or a sixth of a shorter run)")
    opts = p.parse_args(argv)
    if opts.soak is not None and opts.soak <= 0:
        p.error("--soak takes a positive number of minutes")
    if opts.duration is None:
        opts.duration = 1.0 if opts.quick else 3.0
    if opts.warmup is None:
        opts.warmup = 0.5 if opts.quick else 1.0
    if opts.rounds is None:
        opts.rounds = 1 if opts.quick else 3
    return opts


def main(argv=None):
    opts = parse_args(argv)
    if not shutil.which("node"):
        print("node not found: the load generator needs Node.js (>= 18)", file=sys.stderr)
        return 2
    why = ensure_node_modules()
    if why:
        print(why, file=sys.stderr)
        return 2
    if opts.soak is not None:
        why = _live_missing()
        if why:
            print(f"cannot soak: {why}", file=sys.stderr)
            return 2
        return soak_main(opts)

    REDIS_URL[0] = opts.redis_url
    names = []
    for token in (opts.scenarios.split(",") if opts.scenarios else DEFAULT_GROUPS):
        if token in GROUPS:
            names += [n for n, s in SCENARIOS.items()
                      if s.group == token and (s.quick or not opts.quick)]
        elif token in SCENARIOS:
            names.append(token)
        else:
            print(f"unknown scenario {token}; known: {', '.join(SCENARIOS)}, "
                  f"or a group: {', '.join(GROUPS)}", file=sys.stderr)
            return 2
    names = list(dict.fromkeys(names))
    wanted = opts.servers.split(",") if opts.servers else None
    unknown = [n for n in wanted or () if n not in SERVERS]
    if unknown:
        print(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}",
              file=sys.stderr)
        return 2
    plan, skipped = [], {}
    for name in names:
        scn = SCENARIOS[name]
        # A scenario runs on the servers it names, else on every non-cluster one;
        # --quick leaves out the optional reference servers (node) unless asked for.
        candidates = list(scn.servers) or [n for n, k in SERVERS.items() if not k.cluster]
        candidates = [n for n in candidates if (n in wanted) if wanted] if wanted else \
            [n for n in candidates if not (opts.quick and SERVERS[n].optional)]
        usable = []
        for server in candidates:
            if server not in skipped:
                skipped[server] = SERVERS[server].missing()
                if skipped[server]:
                    print(f"skipping server {server}: {skipped[server]}", file=sys.stderr)
            if not skipped[server]:
                usable.append(server)
        if not usable:
            continue
        if scn.group == "cluster" and not any(SERVERS[n].message_queue for n in usable):
            print(f"skipping scenario {name}: no server with a message queue to compare",
                  file=sys.stderr)
            continue
        why = scn.requires() if scn.requires else None
        if why:
            print(f"skipping scenario {name}: {why}", file=sys.stderr)
            continue
        plan.append((scn, usable))
    skipped = {k: v for k, v in skipped.items() if v}
    servers = [n for n in SERVERS if any(n in used for _, used in plan)]
    if not plan:
        print("nothing to run", file=sys.stderr)
        return 2

    server_cpus, loadgen_cpus = cpu_layout()
    git_state = _git_state()
    started = datetime.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    log_dir = os.path.join(RESULTS_DIR, f"{stamp}-logs")
    print(f"# servers: {', '.join(servers)}; pinning: server cpu {server_cpus or '-'}, "
          f"loadgen cpu {loadgen_cpus or '-'}; {opts.rounds} round(s) x {opts.duration:g}s "
          f"(+{opts.warmup:g}s warm-up)", file=sys.stderr, flush=True)
    runs = []
    t_start = time.monotonic()
    for rnd in range(opts.rounds):
        for scn, scn_servers in plan:
            order = scn_servers if rnd % 2 == 0 else list(reversed(scn_servers))
            for server in order:
                r = run_one(scn, server, opts, log_dir=log_dir)
                r["round"] = rnd
                runs.append(r)
                status = "ok" if r.get("ok") else "FAILED: " + r.get("error", "?")[:300]
                with_redis = ""
                if SERVERS[server].message_queue:
                    with_redis = f"({_fmt(r.get('cpu_us_per_op_with_redis'), '.1f')} with Redis)  "
                other_pct = None if r.get("other_cpu") is None else r["other_cpu"] * 100
                print(f"# round {rnd + 1}/{opts.rounds} {scn.name:<19} {server:<13} "
                      f"{_fmt(r.get('ops_per_s'), ',.0f'):>9} {scn.unit}/s  "
                      f"{_fmt(r.get('cpu_us_per_op'), '.1f'):>6} µs/op  {with_redis}"
                      f"other {_fmt(other_pct, '.0f'):>3}%  "
                      f"{status}",
                      file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t_start

    summary = aggregate(runs)
    scen_names = [scn.name for scn, _ in plan if scn.group != "cluster"]
    cluster_names = [scn.name for scn, _ in plan if scn.group == "cluster"]
    main_servers = [n for n in servers if not SERVERS[n].cluster and any(
        n in used for scn, used in plan if scn.group != "cluster")]
    cluster_servers = [n for n in servers
                       if any(n in used for scn, used in plan if scn.group == "cluster")]
    rat = ratios(summary, scen_names, runs)
    crat = cluster_ratios(summary, cluster_names, runs)
    rat_node = ratios(summary, scen_names, runs, "node", "bare")
    comps = comparisons(summary, plan)
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "options": {k: v for k, v in vars(opts).items()},
        "git": git_state,
        "tcp_nodelay": opts.tcp_nodelay,
        "machine": {"cpus": os.cpu_count(),
                    "pinning": {"server": server_cpus, "loadgen": loadgen_cpus},
                    "python": sys.version.split()[0], "node": _node_version(),
                    "versions": _versions()},
        "servers": servers,
        "skipped_servers": skipped,
        "scenarios": {scn.name: {"loadgen": scn.loadgen, "args": scn.args, "unit": scn.unit,
                                 "description": scn.description} for scn, _ in plan},
        "summary": [dict(scenario=k[0], server=k[1], **v) for k, v in summary.items()],
        "ratios_sbio_over_bare": rat,
        "ratios_node_over_bare": rat_node,
        "comparisons": comps,
        "cluster_ratios_over_1_process": crat,
        "runs": runs,
    }
    if cluster_names:
        doc["cluster"] = {"redis": _redact(opts.redis_url),
                          "pinning": f"every sbio process on cpu {server_cpus or '-'}, "
                                     f"the generator on cpu {loadgen_cpus or '-'}, "
                                     "redis-server where the kernel puts it"}
    if not opts.no_save:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, f"{stamp}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"# raw results: {os.path.relpath(path, REPO_ROOT)}", file=sys.stderr)
    if not any(not r.get("ok") for r in runs):
        shutil.rmtree(log_dir, ignore_errors=True)  # server logs are kept only when a run failed
    if opts.json:
        print(json.dumps({"summary": doc["summary"], "ratios_sbio_over_bare": rat,
                          "comparisons": comps, "cluster_ratios_over_1_process": crat}, indent=1))
    else:
        if scen_names:
            print(format_table(summary, scen_names, main_servers, rat))
        pushed = [k for k in summary if k[0] in scen_names
                  and summary[k].get("bytes_per_op") is not None]
        if pushed:
            print("\nLive-data pushes: bytes per update (exact) and server CPU per notify "
                  "(one handler run and the fan-out to every subscriber):\n")
            print(format_push_table(summary, pushed))
        if comps:
            print("\nLive data vs the raw broadcast of the same size and rate (server CPU per "
                  "update / per delivery):\n")
            print(format_comparisons(comps))
        if cluster_names:
            print(("\n" if scen_names else "") + "Two sbio processes on one Redis vs one process "
                  "(receivers split evenly; p50 per process in brackets, the driver's first; "
                  f"every sbio process on cpu {server_cpus or '-'}):\n")
            print(format_cluster_table(summary, cluster_names, cluster_servers, crat))
        rev = git_state["commit"] or "?"
        if git_state["sbio_dirty"]:
            rev += " + uncommitted changes in sbio/"
        print(f"\nsbio at {rev}. {len(runs)} runs in {elapsed:.0f}s; "
              f"medians of {opts.rounds} round(s), "
              f"{opts.duration:g}s measured each. CPU µs/op = server on-CPU time (schedstat) "
              f"over the measured window / ops in it; "
              f"srv CPU = server CPU time / window wall time; "
              f"other = CPU used "
              f"by everything else on the machine in the window (noise; the generator excluded"
              f"{' and redis-server, whose CPU is its own column' if cluster_names else ''}). "
              f"Python servers with TCP_NODELAY {opts.tcp_nodelay}.")
        noisy = [k for k, v in summary.items() if (v["other_cpu"] or 0) > 0.10]
        if noisy:
            print(f"\nWARNING: other processes used more than 10% of a core during "
                  f"{len(noisy)} of {len(summary)} measurements: "
                  "rates and latencies are unreliable, "
                  f"CPU µs/op less so; rerun on a quiet machine.")
    return 0 if all(r.get("ok") for r in runs) else 1


def _git_state():
    """The commit benchmarked and whether sbio/ had uncommitted changes."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "sbio")
    return {"commit": commit or None, "sbio_dirty": bool(dirty), "sbio_changes": dirty.splitlines()}


def _node_version():
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    out = {}
    from importlib import metadata
    for dist in ("python-socketio", "python-engineio", "gevent", "gevent-websocket", "sbio"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    for pkg in ("socket.io-client", "socket.io"):
        try:
            with open(os.path.join(BENCH_DIR, "node_modules", pkg, "package.json")) as f:
                out[pkg] = json.load(f)["version"]
        except (OSError, ValueError, KeyError):
            out[pkg] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
