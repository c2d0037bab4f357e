"""Instructions per operation: the benchmark that a busy machine cannot blur.

    python bench/instructions.py [--scenarios echo-50,fanout-1000] [--servers bare,sbio]
                                 [--count N] [--json]

bench/run.py measures CPU seconds, which move with whatever else the machine
does (another test run, a build, a second core's turbo). This runs the same
scenarios of bench/run.py against the same servers, but each server process
runs under valgrind's callgrind with instrumentation off; the generator's
measure marks (``--sync``) switch it on for exactly the measured window, so
the count covers the operations of the window and nothing else. Callgrind
counts the instructions the process executes in user space (``Ir``): the
same code under the same load gives the same count, loaded machine or not.

It does not see kernel time (system calls: compare their counts with
``strace -c``) or cache misses, and valgrind slows the server ~50x, so keep
``--count`` modest; latencies under valgrind mean nothing and are not shown.
Node is left out (a JIT under valgrind is not the program you ship).

Prints, per scenario, instructions per operation for each server and the
ratio sbio/bare. Needs valgrind (Debian package ``valgrind``) and
bench/node_modules (``npm ci`` in bench/).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import run  # noqa: E402  (bench/run.py: scenarios, servers, process helpers)

#: operations per scenario kind under valgrind: enough to swamp per-window noise
DEFAULT_COUNTS = {"echo": 2000, "fanout": 100}
PYTHON_SERVERS = ("bare", "sbio")


def measure(scn, server, count, out_dir):
    """Instructions the *server* process executes for *count* operations of *scn*."""
    port = run.free_port()
    out = os.path.join(out_dir, f"{server}-{scn.name}.callgrind")
    env = dict(os.environ, PYTHONPATH=run._pythonpath(), SBIO_SERVER__MESSAGE_QUEUE="")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", *run.SERVERS[server].command(port, argparse.Namespace())]
    log_path = out + ".log"
    with open(log_path, "w") as log:
        srv = subprocess.Popen(argv, cwd=run.REPO_ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    gen = None
    try:
        run.wait_for_port(port, srv, timeout=180)
        options = dict(scn.args, count=count, duration=3600, warmup=1, timeout=1800,
                       **{"connect-concurrency": 10})
        argv = ["node", os.path.join(BENCH_DIR, "loadgen.js"), "--url", f"http://127.0.0.1:{port}",
                "--scenario", scn.loadgen, "--sync"]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        gen = subprocess.Popen(argv, cwd=BENCH_DIR, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        result = None
        for line in gen.stdout:
            if line.startswith("#mark measure-start"):
                _control(srv.pid, "-i", "on")
                gen.stdin.write("go\n")
                gen.stdin.flush()
            elif line.startswith("#mark measure-end"):
                _control(srv.pid, "--dump")
                _control(srv.pid, "-i", "off")
                gen.stdin.write("go\n")
                gen.stdin.flush()
            elif line.startswith("{"):
                result = json.loads(line)
        gen.wait(timeout=60)
    finally:
        if gen is not None and gen.poll() is None:
            gen.kill()
        run.stop_process(srv, timeout=30)
    if not result or "error" in result or not result.get("checks", {}).get("ok"):
        raise RuntimeError(f"{server} {scn.name}: the generator failed: "
                           f"{(result or {}).get('error') or run._tail(log_path)}")
    ops = result["measure"]["ops"]
    return {"ops": ops, "instructions": _dumped_instructions(out), "unit": scn.unit}


def _control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def _dumped_instructions(out):
    """Ir of the one explicit dump (``<out>.1``): the measured window."""
    with open(out + ".1") as f:
        match = re.search(r"^summary: (\d+)$", f.read(), re.M)
    if not match:
        raise RuntimeError(f"no summary line in {out}.1")
    return int(match.group(1))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="echo-50,echo-200,fanout-1000",
                   help="comma-separated echo-* / fanout-* scenarios of bench/run.py")
    p.add_argument("--servers", default="bare,sbio",
                   help=f"comma-separated subset of: {', '.join(PYTHON_SERVERS)}")
    p.add_argument("--count", type=int, default=0,
                   help="operations per run (default: echo 2000 acks, fanout 100 broadcasts)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    opts = p.parse_args(argv)
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    opts.servers = [s for s in opts.servers.split(",") if s]
    for name in opts.scenarios:
        if name not in run.SCENARIOS or run.SCENARIOS[name].loadgen not in DEFAULT_COUNTS:
            p.error(f"unknown or unsupported scenario {name!r}")
    for name in opts.servers:
        if name not in PYTHON_SERVERS:
            p.error(f"unknown server {name!r} (node is not measured here)")
    return opts


def main(argv=None):
    opts = parse_args(argv)
    if not shutil.which("valgrind"):
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    run.ensure_node_modules(quiet=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="sbio-instructions-") as out_dir:
        for name in opts.scenarios:
            scn = run.SCENARIOS[name]
            count = opts.count or DEFAULT_COUNTS[scn.loadgen]
            for server in opts.servers:
                print(f"# {name} on {server} under callgrind ({count} operations)...",
                      file=sys.stderr, flush=True)
                results.setdefault(name, {})[server] = measure(scn, server, count, out_dir)
    if opts.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'scenario':14s} {'unit':11s}" + "".join(f" {s + ' Ir/op':>13s}" for s in opts.servers)
          + ("  sbio/bare" if {"sbio", "bare"} <= set(opts.servers) else ""))
    for name, by_server in results.items():
        per_op = {s: r["instructions"] / r["ops"] for s, r in by_server.items()}
        row = f"{name:14s} {run.SCENARIOS[name].unit:11s}"
        row += "".join(f" {per_op[s]:13,.0f}" for s in opts.servers)
        if "sbio" in per_op and "bare" in per_op:
            row += f"  {per_op['sbio'] / per_op['bare']:9.3f}"
        print(row)


if __name__ == "__main__":
    main()
