// Test support for the sbio.js node tests (not a test file itself: the npm
// script runs test/*.test.js only).
//
// startServer() runs a REAL sbio server as a subprocess:
//   python -m sbio run --host 127.0.0.1 --port P --namespaces static/test/namespaces
// from the repository root, waits (bounded) until the port accepts
// connections and returns a handle whose stop() kills it.
"use strict";

const { spawn, spawnSync } = require("node:child_process");
const net = require("node:net");
const path = require("node:path");

const REPO_ROOT = path.resolve(__dirname, "..", "..");
const NAMESPACES_DIR = path.join("static", "test", "namespaces");
const PYTHON = process.env.SBIO_PYTHON || "python3";
const START_TIMEOUT_MS = Number(process.env.SBIO_TEST_START_TIMEOUT_MS || 30000);

/** A TCP port that was free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function portAccepts(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Start an sbio server on `port` (a free one when omitted).
 * @returns {Promise<{port, url, proc, output(): string, stop(signal?): Promise}>}
 */
async function startServer({ port, attempts = 3 } = {}) {
  port = port || (await freePort());
  let lastError;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      return await startOnce(port);
    } catch (err) {
      lastError = err;
      // A port just released by a killed server may still be busy for a moment.
      await sleep(300 * attempt);
    }
  }
  throw lastError;
}

async function startOnce(port) {
  const args = ["-m", "sbio", "run", "--host", "127.0.0.1", "--port", String(port), "--namespaces", NAMESPACES_DIR];
  const proc = spawn(PYTHON, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (out += d));
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.once("exit", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    proc.once("error", (err) => {
      exited = { code: null, signal: null, error: err };
      resolve(exited);
    });
  });

  const handle = {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    output: () => out,
    /** Kill the server (SIGTERM by default; SIGKILL to simulate a crash) and wait for it to exit. */
    async stop(signal = "SIGTERM") {
      if (exited) return exited;
      proc.kill(signal);
      const timer = setTimeout(() => {
        if (!exited) proc.kill("SIGKILL");
      }, 5000);
      const result = await exitPromise;
      clearTimeout(timer);
      return result;
    },
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(
        `sbio server exited before accepting connections (${JSON.stringify(exited)}): ` +
          `${PYTHON} ${args.join(" ")}\n--- server output ---\n${out}`
      );
    }
    if (await portAccepts(port)) return handle;
    await sleep(100);
  }
  await handle.stop("SIGKILL");
  throw new Error(`sbio server did not accept connections on port ${port} within ${START_TIMEOUT_MS} ms\n--- server output ---\n${out}`);
}

/**
 * Records values pushed to a callback and lets a test await them, each wait
 * bounded by a timeout.
 */
class Recorder {
  constructor(name = "recorder") {
    this.name = name;
    this.values = [];
    this.waiters = [];
    this.fn = (...args) => this.push(args.length > 1 ? args : args[0]);
  }
  push(value) {
    this.values.push(value);
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
  /** Resolve once at least `count` values were recorded; returns values[count - 1]. */
  async waitCount(count, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (this.values.length < count) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`${this.name}: waited ${timeoutMs} ms for ${count} value(s), got ${JSON.stringify(this.values)}`);
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.values[count - 1];
  }
  /** Wait for the next value after the ones already recorded. */
  next(timeoutMs) {
    return this.waitCount(this.values.length + 1, timeoutMs);
  }
}

/** Wait for `conn` to emit `event` (optionally matching `pred`), bounded. */
function waitEvent(conn, event, pred = () => true, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      conn.off(event, on);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for "${event}"`));
    }, timeoutMs);
    const on = (value) => {
      if (!pred(value)) return;
      clearTimeout(t);
      conn.off(event, on);
      resolve(value);
    };
    conn.on(event, on);
  });
}

/** Wait for conn.status === status (checking the current one first). */
function waitStatus(conn, status, timeoutMs = 10000) {
  if (conn.status === status) return Promise.resolve(status);
  return waitEvent(conn, "status", (s) => s === status, timeoutMs);
}

/**
 * One real server for the calling test file, started before its tests; the
 * connections made with `open()` are closed and the server stopped after them.
 * @returns {{open(options?): object, readonly url: string}}
 */
function useServer(namespace = "/jsdemo") {
  const { before, after } = require("node:test");
  const sbio = require("../sbio.js");
  let server = null;
  const conns = [];
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    for (const c of conns) c.close();
    if (server) await server.stop();
  });
  return {
    get url() {
      return server.url;
    },
    open(options = {}) {
      const conn = sbio.connect(namespace, { url: server.url, transports: ["websocket"], ...options });
      conns.push(conn);
      return conn;
    },
  };
}

module.exports = {
  REPO_ROOT,
  PYTHON,
  Recorder,
  freePort,
  useServer,
  sleep,
  startServer,
  waitEvent,
  waitStatus,
};
