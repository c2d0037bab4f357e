#!/usr/bin/env node
/*
 * sbio load generator: socket.io-client v4 over websocket only.
 *
 *   node bench/loadgen.js --url http://127.0.0.1:8282 --scenario echo --clients 50
 *   node bench/loadgen.js --url http://127.0.0.1:8282 --scenario fanout --receivers 1000
 *   node bench/loadgen.js --url http://127.0.0.1:8001,http://127.0.0.1:8002 --scenario fanout
 *
 * --url takes one URL or several, comma-separated: connection i goes to URL
 * i mod N (so the connections are split evenly, and connection 0 -- the
 * fan-out driver -- is on the first URL). Several URLs are for several
 * server processes sharing a message queue (bench/run.py's cluster group).
 *
 * Every run has the same phases:
 *
 *   connect   open the connections, at most --connect-concurrency at a time
 *   warmup    run the load for --warmup seconds, then stop issuing and wait
 *             until nothing is in flight (every ack and delivery is back)
 *   measure   print "#mark measure-start"; with --sync wait for a "go" line on
 *             stdin (the runner samples the server's CPU time meanwhile, while
 *             the server is idle); run the load for --duration seconds or
 *             --count operations, whichever comes first; stop issuing and
 *             drain; print "#mark measure-end" and (with --sync) wait for "go"
 *   report    print ONE JSON line with the results, disconnect, exit
 *
 * Because the load is drained before both marks, the server does no work for
 * this run outside the window, so the server CPU time the runner samples at
 * the two marks belongs exactly to the operations counted inside it.
 *
 * Lines starting with "#" are progress marks; the last line is the JSON
 * result. Everything is bounded: --timeout (seconds) ends the process with
 * {"error": ...} and exit code 2 whatever happens.
 *
 * Scenarios are registered in SCENARIOS at the bottom: a function
 * (opts, ctl) -> result object. The live-data scenario (issue 3) plugs in
 * there.
 */
'use strict';

const { io } = require('socket.io-client');
const { performance } = require('perf_hooks');
const readline = require('readline');

// ---------------------------------------------------------------- options --
const DEFAULTS = {
  url: 'http://127.0.0.1:8282', // or several, comma-separated: connections split evenly
  namespace: '/bench',
  scenario: 'echo',
  receivers: 100, // fanout: connections receiving every broadcast (the driver is one of them)
  window: 4, // fanout: broadcasts in flight (not yet acked and delivered everywhere)
  rate: 0, // fanout / live: broadcasts (notifies) per second, open loop; 0 = as fast as the window allows
  handler: 'tick_shared', // live: the subscribed handler (event name)
  bump: 'bump', // live: the driver's event that changes the result and notifies
  delta: 0, // live: 1 = subscribe with "delta": true and apply the JSON Patches (sbio.js's applyPatch)
  payloadSize: 100, // bytes of the string payload
  warmup: 1, // seconds
  duration: 3, // seconds of measured load
  count: 0, // max measured operations (echo: acks, fanout: broadcasts); 0 = no limit
  connectConcurrency: 50,
  ackTimeout: 10, // seconds before one ack counts as an error
  drainTimeout: 30, // seconds to wait for in-flight work at a phase end
  slow: 0, // fanout: extra connections that never read (slow consumers; see slowConsumer)
  dropTimeout: 30, // slow-consumer: seconds of fan-out to wait, after the window, for the server to drop them
  clients: 50, // echo: concurrent closed-loop clients; soak: subscribed connections
  churn: 20, // soak: connections dropped (and as many opened) per second
  sampleInterval: 60, // soak: seconds between two "#sample" lines
  timeout: 120, // hard limit for the whole process, seconds
  sync: false, // wait for "go" on stdin after each mark
};

function parseArgs(argv) {
  const opts = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}`);
    const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in DEFAULTS)) throw new Error(`unknown option ${arg}`);
    if (typeof DEFAULTS[key] === 'boolean') {
      opts[key] = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`option ${arg} needs a value`);
    opts[key] = typeof DEFAULTS[key] === 'number' ? Number(value) : value;
    if (Number.isNaN(opts[key])) throw new Error(`option ${arg} needs a number`);
  }
  return opts;
}

// ---------------------------------------------------------------- helpers --
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

function latencySummary(samples) {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  const r3 = (v) => (v === null ? null : Math.round(v * 1000) / 1000);
  return {
    n: sorted.length,
    p50: r3(percentile(sorted, 50)),
    p90: r3(percentile(sorted, 90)),
    p99: r3(percentile(sorted, 99)),
    max: r3(sorted.length ? sorted[sorted.length - 1] : null),
    mean: r3(sorted.length ? sum / sorted.length : null),
  };
}

/** Progress marks and the stdin handshake with the runner. */
class Control {
  constructor(sync) {
    this.sync = sync;
    this.waiters = [];
    this.pending = 0; // "go" lines received before anyone waited
    this.closed = false;
    if (sync) {
      const rl = readline.createInterface({ input: process.stdin });
      rl.on('line', (line) => {
        if (line.trim() !== 'go') return;
        const w = this.waiters.shift();
        if (w) w();
        else this.pending++;
      });
      rl.on('close', () => {
        this.closed = true;
        for (const w of this.waiters.splice(0)) w();
      });
    }
  }

  /** Print "#mark NAME"; with --sync, resolve when the runner answers "go". */
  mark(name) {
    process.stdout.write(`#mark ${name}\n`);
    if (!this.sync || this.closed) return Promise.resolve();
    if (this.pending > 0) {
      this.pending--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Print "#sample {json}" (no handshake: the load goes on while the runner samples). */
  sample(obj) {
    process.stdout.write(`#sample ${JSON.stringify(obj)}\n`);
  }

  progress(text) {
    process.stdout.write(`# ${text}\n`);
  }
}

/** CPU time of this generator process over a window: to spot a saturated generator. */
function cpuWindow() {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const c = process.cpuUsage(c0);
    const wall = (performance.now() - t0) * 1000;
    return {
      user_ms: Math.round(c.user / 1000),
      system_ms: Math.round(c.system / 1000),
      util: wall > 0 ? Math.round(((c.user + c.system) / wall) * 1000) / 1000 : null,
    };
  };
}

// ------------------------------------------------------------ connections --
const ALL_SOCKETS = [];

/** The server URLs of --url (one, or several comma-separated). */
function urlsOf(opts) {
  const urls = String(opts.url)
    .split(',')
    .map((u) => u.trim())
    .filter(Boolean);
  if (urls.length === 0) throw new Error('--url is empty');
  return urls;
}

/** Index in urlsOf(opts) of connection i: round robin, so connection 0 is on the first URL. */
const urlIndexOf = (i, nUrls) => i % nUrls;

function connectOne(opts, url) {
  return new Promise((resolve, reject) => {
    const sock = io(url + opts.namespace, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: 20000,
    });
    ALL_SOCKETS.push(sock);
    const onError = (err) => {
      sock.off('connect', onConnect);
      sock.close();
      reject(err);
    };
    const onConnect = () => {
      sock.off('connect_error', onError);
      resolve(sock);
    };
    sock.once('connect', onConnect);
    sock.once('connect_error', onError);
  });
}

/**
 * Open n connections with at most `concurrency` handshakes in flight, so a
 * connect storm does not overflow the server's accept backlog. A failed
 * connect is retried up to 3 times with a short back-off.
 */
async function connectMany(n, opts, ctl) {
  const urls = urlsOf(opts);
  const sockets = new Array(n);
  let next = 0;
  let retries = 0;
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          sockets[i] = await connectOne(opts, urls[urlIndexOf(i, urls.length)]);
          break;
        } catch (err) {
          if (attempt >= 3) throw new Error(`connect ${i} failed: ${err.message}`);
          retries++;
          await sleep(100 * (attempt + 1));
        }
      }
    }
  }
  const workers = [];
  for (let w = 0; w < Math.min(opts.connectConcurrency, n); w++) workers.push(worker());
  await Promise.all(workers);
  const seconds = (performance.now() - t0) / 1000;
  const perUrl = urls.map((url, u) => ({ url, n: Math.floor(n / urls.length) + (u < n % urls.length ? 1 : 0) }));
  ctl.progress(`connected ${n} in ${seconds.toFixed(2)}s (${retries} retries)` +
    (urls.length > 1 ? `: ${perUrl.map((x) => `${x.n} to ${x.url}`).join(', ')}` : ''));
  return { sockets, connect: { n, seconds: Math.round(seconds * 1000) / 1000, retries, per_url: perUrl } };
}

// --------------------------------------------------------- slow consumers --
const net = require('net');
const crypto = require('crypto');

/** A masked client text frame (client-to-server frames must be masked). */
function clientTextFrame(text) {
  const payload = Buffer.from(text);
  if (payload.length > 125) throw new Error('clientTextFrame: short frames only');
  const mask = crypto.randomBytes(4);
  const frame = Buffer.alloc(6 + payload.length);
  frame[0] = 0x81;
  frame[1] = 0x80 | payload.length;
  mask.copy(frame, 2);
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i % 4];
  return frame;
}

/** Unmasked server text frames in `buf`: [texts, bytes used] (stops at an incomplete frame). */
function serverFrames(buf) {
  const texts = [];
  let at = 0;
  while (buf.length - at >= 2) {
    let len = buf[at + 1] & 0x7f;
    let head = 2;
    if (len === 126) {
      if (buf.length - at < 4) break;
      len = buf.readUInt16BE(at + 2);
      head = 4;
    } else if (len === 127) {
      if (buf.length - at < 10) break;
      len = Number(buf.readBigUInt64BE(at + 2));
      head = 10;
    }
    if (buf.length - at < head + len) break;
    texts.push(buf.subarray(at + head, at + head + len).toString());
    at += head + len;
  }
  return [texts, at];
}

/**
 * A connection that joins the namespace over a raw websocket, then never
 * reads again (socket paused: the kernel buffers fill, then the server's
 * writes block) while it keeps the session alive with an unsolicited
 * Engine.IO PONG ("3") every 200 ms. The server is expected to drop it as a
 * slow consumer: it then resets the TCP connection, and the next PONG write
 * fails, which is how `dropped` is seen (a paused socket reads nothing,
 * not even the reset).
 */
function slowConsumer(opts, url) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const key = crypto.randomBytes(16).toString('base64');
    const sock = net.connect({ host: u.hostname, port: Number(u.port) });
    const state = { dropped: false, droppedAfterMs: null, joinedAt: null, timer: null, sock };
    let buf = Buffer.alloc(0);
    let stage = 'http';
    const fail = (err) => {
      clearInterval(state.timer);
      sock.destroy();
      reject(err);
    };
    const onDrop = () => {
      if (stage !== 'paused' || state.dropped) return;
      state.dropped = true;
      state.droppedAfterMs = Math.round(performance.now() - state.joinedAt);
      clearInterval(state.timer);
      sock.destroy();
    };
    sock.on('error', (err) => (stage === 'paused' ? onDrop() : fail(err)));
    sock.on('close', () => (stage === 'paused' ? onDrop() : fail(new Error(`closed during ${stage}`))));
    sock.on('connect', () => {
      sock.write(
        `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${u.host}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
          'Sec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (stage === 'http') {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        if (!head.startsWith('HTTP/1.1 101')) return fail(new Error(`no upgrade: ${head.split('\r\n')[0]}`));
        buf = buf.subarray(end + 4);
        stage = 'open';
      }
      const [texts, used] = serverFrames(buf);
      buf = buf.subarray(used);
      for (const text of texts) {
        if (stage === 'open' && text.startsWith('0{')) {
          stage = 'join';
          sock.write(clientTextFrame(`40${opts.namespace},`));
        } else if (stage === 'join' && text.startsWith(`40${opts.namespace},`)) {
          stage = 'paused';
          sock.pause(); // never read again
          state.joinedAt = performance.now();
          state.timer = setInterval(() => sock.write(clientTextFrame('3')), 200);
          resolve(state);
          return;
        }
      }
    });
  });
}

// ------------------------------------------------------------------- echo --
/**
 * C clients, each in a closed loop: emit "echo" with a payload-size string
 * and an ack, wait for the ack, repeat. Latency = emit to ack, per ack.
 */
async function runEcho(opts, ctl) {
  const payload = 'x'.repeat(opts.payloadSize);
  const { sockets, connect } = await connectMany(opts.clients, opts, ctl);
  const stats = { sent: 0, acked: 0, badAcks: 0, errors: 0 };

  async function phase(seconds, limit, record) {
    const lat = [];
    const counts = { sent: 0, acked: 0, badAcks: 0, errors: 0 };
    let issuing = true;
    const deadline = performance.now() + seconds * 1000;
    async function loop(sock) {
      while (issuing) {
        if (performance.now() >= deadline || (limit > 0 && counts.sent >= limit)) {
          issuing = false;
          break;
        }
        counts.sent++;
        const t0 = performance.now();
        try {
          const resp = await sock.timeout(opts.ackTimeout * 1000).emitWithAck('echo', payload);
          const dt = performance.now() - t0;
          counts.acked++;
          if (!resp || resp.ok !== true || resp.data !== payload) counts.badAcks++;
          if (record) lat.push(dt);
        } catch (err) {
          counts.errors++;
        }
      }
    }
    const t0 = performance.now();
    await Promise.all(sockets.map(loop)); // returns once every loop got its last ack: drained
    const seconds_ = (performance.now() - t0) / 1000;
    for (const k of Object.keys(stats)) stats[k] += counts[k];
    return { seconds: seconds_, lat, counts };
  }

  ctl.progress('warmup');
  await phase(opts.warmup, 0, false);
  await ctl.mark('measure-start');
  const cpu = cpuWindow();
  const m = await phase(opts.duration, opts.count, true);
  const clientCpu = cpu();
  await ctl.mark('measure-end');

  return {
    connect,
    measure: {
      unit: 'acks',
      seconds: Math.round(m.seconds * 1000) / 1000,
      ops: m.counts.acked,
      ops_per_s: Math.round(m.counts.acked / m.seconds),
      latency_ms: latencySummary(m.lat),
      counts: m.counts,
    },
    checks: {
      sent: stats.sent,
      acked: stats.acked,
      bad_acks: stats.badAcks,
      errors: stats.errors,
      ok: stats.sent === stats.acked && stats.badAcks === 0 && stats.errors === 0,
    },
    client_cpu: clientCpu,
  };
}

// ----------------------------------------------------------------- fanout --
/**
 * R connections listen to "fan"; connection 0 is also the driver: it emits
 * "fanout" (with an ack) carrying {seq, t, pad}, and the server broadcasts
 * "fan" with that payload to every connection of the namespace, i.e. to the
 * R connections here, so one broadcast = R deliveries. At most --window
 * broadcasts are in flight (not yet acked or not yet delivered to all R).
 * Latency = emit by the driver to receipt at each receiver (same process,
 * same monotonic clock). With --rate the driver emits at that fixed rate
 * instead (open loop; the window still caps what is in flight).
 */
async function runFanout(opts, ctl) {
  const R = opts.receivers;
  const pad = 'x'.repeat(opts.payloadSize);
  const urls = urlsOf(opts);
  const { sockets, connect } = await connectMany(R, opts, ctl);
  const driver = sockets[0];
  const urlOf = Int32Array.from({ length: R }, (_, i) => urlIndexOf(i, urls.length));
  const slow = [];
  for (let i = 0; i < opts.slow; i++) slow.push(await slowConsumer(opts, urls[0]));
  if (opts.slow > 0) {
    ctl.progress(`${opts.slow} slow consumer(s) joined and stopped reading`);
    await ctl.mark('connected'); // the runner samples the server's RSS before any load
  }

  let seq = 0; // next broadcast number
  const remaining = new Map(); // seq -> deliveries still expected (+1 for the ack)
  const perReceiver = new Int32Array(R);
  // Which broadcasts each receiver got, one byte per seq (grown by doubling):
  // a second copy of one is a duplicate. With per-receiver count == broadcasts
  // and no duplicates, every receiver got every broadcast exactly once.
  const seen = Array.from({ length: R }, () => new Uint8Array(1024));
  let duplicates = 0;
  let recordFrom = Infinity; // seq range whose deliveries are measured
  let recordTo = Infinity;
  let lat = urls.map(() => []); // per URL, so a second process's latency can be told apart
  let deliveredInWindow = 0;
  let wake = null; // resolves when a broadcast completes
  const stats = { broadcasts: 0, acked: 0, badAcks: 0, errors: 0, deliveries: 0, unknown: 0 };

  function completeOne(s) {
    const left = remaining.get(s) - 1;
    if (left > 0) {
      remaining.set(s, left);
      return;
    }
    remaining.delete(s);
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  }

  sockets.forEach((sock, idx) => {
    sock.on('fan', (p) => {
      const now = performance.now();
      perReceiver[idx]++;
      stats.deliveries++;
      if (!p || typeof p.seq !== 'number' || !Number.isInteger(p.seq) || p.seq < 0 || p.seq >= seq) {
        stats.unknown++;
        return;
      }
      let mine = seen[idx];
      if (p.seq >= mine.length) {
        let size = mine.length;
        while (size <= p.seq) size *= 2;
        const grown = new Uint8Array(size);
        grown.set(mine);
        seen[idx] = mine = grown;
      }
      if (mine[p.seq]) {
        duplicates++;
        return;
      }
      mine[p.seq] = 1;
      if (!remaining.has(p.seq)) {
        stats.unknown++; // completed already: cannot happen without a duplicate
        return;
      }
      if (p.seq >= recordFrom && p.seq < recordTo) {
        lat[urlOf[idx]].push(now - p.t);
        deliveredInWindow++;
      }
      completeOne(p.seq);
    });
  });

  function send() {
    const s = seq++;
    remaining.set(s, R + 1);
    stats.broadcasts++;
    driver
      .timeout(opts.ackTimeout * 1000)
      .emitWithAck('fanout', { seq: s, t: performance.now(), pad })
      .then(
        (resp) => {
          stats.acked++;
          if (!resp || resp.ok !== true) stats.badAcks++;
          completeOne(s);
        },
        () => {
          stats.errors++;
          completeOne(s);
        },
      );
  }

  async function drain() {
    const deadline = performance.now() + opts.drainTimeout * 1000;
    while (remaining.size > 0 && performance.now() < deadline) {
      await Promise.race([new Promise((r) => (wake = r)), sleep(50)]);
    }
    return remaining.size;
  }

  async function phase(seconds, limit, until = () => false) {
    const first = seq;
    const deadline = performance.now() + seconds * 1000;
    const t0 = performance.now();
    const interval = opts.rate > 0 ? 1000 / opts.rate : 0;
    let next = t0;
    while (performance.now() < deadline && !(limit > 0 && seq - first >= limit) && !until()) {
      if (interval > 0) {
        const wait = next - performance.now();
        if (wait > 0) {
          await sleep(wait);
          continue; // re-check the deadline
        }
      }
      if (remaining.size < opts.window) {
        send();
        next += interval;
        continue;
      }
      await Promise.race([new Promise((r) => (wake = r)), sleep(50)]);
    }
    const stuck = await drain();
    return { first, last: seq, seconds: (performance.now() - t0) / 1000, stuck };
  }

  ctl.progress('warmup');
  const w = await phase(opts.warmup, 0);
  await ctl.mark('measure-start');
  recordFrom = seq;
  recordTo = Infinity;
  lat = urls.map(() => []);
  deliveredInWindow = 0;
  const cpu = cpuWindow();
  const m = await phase(opts.duration, opts.count);
  recordTo = m.last;
  const clientCpu = cpu();
  await ctl.mark('measure-end');
  let afterWindow = null;
  if (opts.slow > 0) {
    // Fan-out goes on (unmeasured) until the server has dropped every slow
    // consumer, or --drop-timeout; then the runner samples the RSS again.
    const allDropped = () => slow.every((c) => c.dropped);
    const d = await phase(opts.dropTimeout, 0, allDropped);
    afterWindow = { seconds: Math.round(d.seconds * 1000) / 1000, broadcasts: d.last - d.first, stuck: d.stuck };
    await ctl.mark('after-drop');
    for (const c of slow) {
      clearInterval(c.timer);
      c.sock.destroy();
    }
  }

  const broadcasts = m.last - m.first;
  let minPer = Infinity;
  let maxPer = 0;
  let complete = 0;
  const byUrl = urls.map((url) => ({ url, receivers: 0, complete: 0, deliveries: 0 }));
  for (let i = 0; i < R; i++) {
    const c = perReceiver[i];
    minPer = Math.min(minPer, c);
    maxPer = Math.max(maxPer, c);
    const u = byUrl[urlOf[i]];
    u.receivers++;
    u.deliveries += c;
    if (c === seq) {
      complete++;
      u.complete++;
    }
  }
  const allLat = lat.length === 1 ? lat[0] : [].concat(...lat);
  const stuck = w.stuck + m.stuck + (afterWindow ? afterWindow.stuck : 0);
  const slowChecks = opts.slow > 0
    ? {
        slow: {
          consumers: slow.length,
          dropped: slow.filter((c) => c.dropped).length,
          dropped_after_ms: slow.map((c) => c.droppedAfterMs),
          after_window: afterWindow,
        },
      }
    : {};
  return {
    connect,
    measure: {
      unit: 'deliveries',
      seconds: Math.round(m.seconds * 1000) / 1000,
      ops: deliveredInWindow,
      ops_per_s: Math.round(deliveredInWindow / m.seconds),
      broadcasts,
      broadcasts_per_s: Math.round((broadcasts / m.seconds) * 10) / 10,
      latency_ms: latencySummary(allLat),
      ...(urls.length > 1 ? { latency_ms_by_url: urls.map((url, u) => ({ url, ...latencySummary(lat[u]) })) } : {}),
    },
    checks: {
      receivers: R,
      broadcasts: stats.broadcasts,
      acked: stats.acked,
      bad_acks: stats.badAcks,
      errors: stats.errors,
      deliveries: stats.deliveries,
      expected_deliveries: stats.broadcasts * R,
      unknown: stats.unknown,
      duplicates,
      min_per_receiver: minPer,
      max_per_receiver: maxPer,
      receivers_complete: complete,
      by_url: byUrl,
      stuck_after_drain: stuck,
      ...slowChecks,
      ok:
        slow.every((c) => c.dropped) &&
        stats.acked === stats.broadcasts &&
        stats.badAcks === 0 &&
        stats.errors === 0 &&
        stats.unknown === 0 &&
        duplicates === 0 &&
        stuck === 0 &&
        complete === R &&
        stats.deliveries === stats.broadcasts * R,
    },
    client_cpu: clientCpu,
  };
}

// ------------------------------------------------------------------- live --
/**
 * Live data (sbio only; issue 3). R connections subscribe (`sbio:subscribe`
 * {id, event: --handler, args: []}) to a handler that returns the server's
 * current tick {seq, t}; connection 0 is also the driver and calls `bump`
 * ({seq, t}) at --rate per second; the server stores the tick and notifies
 * the handler's channel, the broadcaster re-runs the subscriptions (once for
 * a shared handler) and pushes `sbio:update` {id, data: {seq, t}}.
 * Latency = the bump's emit to each update's receipt. One operation = one
 * update received. Notifications coalesced by the broadcaster (an update
 * that skips a seq) are counted, not errors; at the end every subscriber
 * must hold the last tick.
 */
async function runLive(opts, ctl) {
  const R = opts.receivers;
  const SUB_ID = 'bench';
  const delta = opts.delta > 0;
  const { sockets, connect } = await connectMany(R, opts, ctl);
  const driver = sockets[0];
  const lastSeq = new Float64Array(R).fill(-Infinity);
  // delta: each subscriber's current value; a patch applies to it (sbio.js's function)
  const values = new Array(R).fill(undefined);
  const applyPatch = delta ? require('../static/sbio.js').applyPatch : null;
  // Bytes of the sbio:update packets received (socket.io packet text, UTF-8),
  // counted inside the measure window only.
  let counting = false;
  let updateBytes = 0;
  let updatePackets = 0;
  let patches = 0;
  let recordFrom = Infinity;
  let recordTo = Infinity;
  let lat = [];
  let inWindow = 0;
  let bumpsInFlight = 0;
  let wake = null;
  const stats = { bumps: 0, acked: 0, badAcks: 0, errors: 0, updates: 0, updateErrors: 0, stale: 0 };
  const poke = () => {
    if (wake) {
      const w = wake;
      wake = null;
      w();
    }
  };

  sockets.forEach((sock, idx) => {
    sock.io.engine.on('packet', (packet) => {
      if (counting && packet.type === 'message' && typeof packet.data === 'string' &&
          packet.data.indexOf('"sbio:update"') !== -1) {
        updateBytes += Buffer.byteLength(packet.data);
        updatePackets++;
      }
    });
    sock.on('sbio:update', (u) => {
      const now = performance.now();
      if (!u || u.id !== SUB_ID) return;
      let d = u.data;
      if (delta) {
        if (u.patch !== undefined) {
          if (values[idx] === undefined) {
            stats.updateErrors++; // a patch before any whole push: never from sbio
            return;
          }
          d = applyPatch(values[idx], u.patch);
          if (counting) patches++;
        }
        if (!u.error) values[idx] = d;
      }
      if (u.error || !d || typeof d.seq !== 'number') {
        stats.updateErrors++;
        return;
      }
      stats.updates++;
      if (d.seq <= lastSeq[idx]) stats.stale++;
      else lastSeq[idx] = d.seq;
      if (d.seq >= recordFrom && d.seq < recordTo) {
        lat.push(now - d.t);
        inWindow++;
      }
      poke();
    });
  });

  // Subscribe everyone, with bounded concurrency like the connects.
  const t0 = performance.now();
  let nextSub = 0;
  async function subscriber() {
    while (nextSub < R) {
      const i = nextSub++;
      const resp = await sockets[i]
        .timeout(opts.ackTimeout * 1000)
        .emitWithAck('sbio:subscribe', { id: SUB_ID, event: opts.handler, args: [], delta });
      if (!resp || resp.ok !== true) throw new Error(`subscribe ${i} failed: ${JSON.stringify(resp)}`);
      if (resp.data && typeof resp.data.seq === 'number') lastSeq[i] = Math.max(lastSeq[i], resp.data.seq);
    }
  }
  const subs = [];
  for (let w = 0; w < Math.min(opts.connectConcurrency, R); w++) subs.push(subscriber());
  await Promise.all(subs);
  const subscribeSeconds = (performance.now() - t0) / 1000;
  ctl.progress(`subscribed ${R} to ${opts.handler} in ${subscribeSeconds.toFixed(2)}s`);

  // Continue the server's sequence (a server reused across runs keeps its tick).
  let seq = 0;
  for (let i = 0; i < R; i++) if (lastSeq[i] + 1 > seq) seq = lastSeq[i] + 1;
  function bump() {
    const s = seq++;
    stats.bumps++;
    bumpsInFlight++;
    driver
      .timeout(opts.ackTimeout * 1000)
      .emitWithAck(opts.bump, { seq: s, t: performance.now() })
      .then(
        (resp) => {
          stats.acked++;
          if (!resp || resp.ok !== true) stats.badAcks++;
        },
        () => stats.errors++,
      )
      .finally(() => {
        bumpsInFlight--;
        poke();
      });
  }

  function behind() {
    // subscribers that do not hold the last tick yet
    let n = 0;
    for (let i = 0; i < R; i++) if (lastSeq[i] < seq - 1) n++;
    return n;
  }

  async function phase(seconds, limit) {
    const first = seq;
    const start = performance.now();
    const deadline = start + seconds * 1000;
    const interval = 1000 / (opts.rate > 0 ? opts.rate : 10);
    let next = start;
    while (performance.now() < deadline && !(limit > 0 && seq - first >= limit)) {
      const wait = next - performance.now();
      if (wait > 0) {
        await sleep(Math.min(wait, deadline - performance.now()));
        continue;
      }
      if (bumpsInFlight < opts.window) {
        bump();
        next += interval;
      } else {
        await Promise.race([new Promise((r) => (wake = r)), sleep(50)]);
      }
    }
    // drain: every bump acked and every subscriber holding the last tick
    const drainDeadline = performance.now() + opts.drainTimeout * 1000;
    let lagging = behind();
    while ((bumpsInFlight > 0 || lagging > 0) && performance.now() < drainDeadline) {
      await Promise.race([new Promise((r) => (wake = r)), sleep(50)]);
      lagging = behind();
    }
    return { first, last: seq, seconds: (performance.now() - start) / 1000, lagging, inFlight: bumpsInFlight };
  }

  ctl.progress('warmup');
  const w = await phase(opts.warmup, 0);
  await ctl.mark('measure-start');
  recordFrom = seq;
  lat = [];
  inWindow = 0;
  counting = true;
  const cpu = cpuWindow();
  const m = await phase(opts.duration, opts.count);
  recordTo = m.last;
  const clientCpu = cpu();
  counting = false;
  await ctl.mark('measure-end');
  let afterWindow = null;
  if (opts.slow > 0) {
    // Fan-out goes on (unmeasured) until the server has dropped every slow
    // consumer, or --drop-timeout; then the runner samples the RSS again.
    const allDropped = () => slow.every((c) => c.dropped);
    const d = await phase(opts.dropTimeout, 0, allDropped);
    afterWindow = { seconds: Math.round(d.seconds * 1000) / 1000, broadcasts: d.last - d.first, stuck: d.stuck };
    await ctl.mark('after-drop');
    for (const c of slow) {
      clearInterval(c.timer);
      c.sock.destroy();
    }
  }

  const notifies = m.last - m.first;
  const expected = notifies * R;
  return {
    connect: { ...connect, subscribe_seconds: Math.round(subscribeSeconds * 1000) / 1000 },
    measure: {
      unit: 'updates',
      seconds: Math.round(m.seconds * 1000) / 1000,
      ops: inWindow,
      ops_per_s: Math.round(inWindow / m.seconds),
      notifies,
      notifies_per_s: Math.round((notifies / m.seconds) * 10) / 10,
      coalesced: expected - inWindow,
      latency_ms: latencySummary(lat),
      delta,
      update_packets: updatePackets,
      update_bytes: updateBytes,
      bytes_per_update: updatePackets ? Math.round(updateBytes / updatePackets) : null,
      patches,
    },
    checks: {
      subscribers: R,
      handler: opts.handler,
      bumps: stats.bumps,
      acked: stats.acked,
      bad_acks: stats.badAcks,
      errors: stats.errors,
      updates: stats.updates,
      update_errors: stats.updateErrors,
      stale: stats.stale,
      lagging_after_drain: w.lagging + m.lagging,
      ok:
        stats.acked === stats.bumps &&
        stats.badAcks === 0 &&
        stats.errors === 0 &&
        stats.updateErrors === 0 &&
        stats.stale === 0 &&
        m.lagging === 0 &&
        w.lagging === 0,
    },
    client_cpu: clientCpu,
  };
}

// ------------------------------------------------------------------- soak --
/**
 * Soak (sbio only; issue 18): --clients connections subscribed for
 * --duration seconds, even ones to tick_private (per-connection), odd ones to
 * tick_shared (shared=True); a driver connection (not subscribed, never
 * dropped) calls `bump` at --rate per second; every second --churn clients
 * are dropped, half cleanly (socket.io disconnect), half by resetting their
 * TCP connection (no close frame, no FIN: an RST), and as many new ones
 * connect and subscribe to the same handlers, so the population stays at
 * --clients.
 *
 * Phases, with the runner's handshake (--sync):
 *
 *   warm-up   one connection subscribes to both handlers, bumps once, gets
 *             both updates and disconnects; "#mark baseline" (the runner
 *             waits until the server has let go of it and records its
 *             counts as the baseline)
 *   connect   the driver and --clients subscribed connections
 *   soak      bumps and churn; a "#sample {json}" line at the start, every
 *             --sample-interval seconds and at the end (the runner samples
 *             the server at each)
 *   drain     churn stops, the last bump is acked, every connection must
 *             end on the last tick (the final-value check, --drain-timeout);
 *             "#sample" with phase "drained"
 *   close     every connection closes (half cleanly, half by a reset),
 *             the driver too; then the JSON result
 *
 * Ordering check: the ticks a connection gets (its subscribe ack, then its
 * updates) must increase strictly; an update that does not is `stale`.
 * Skipped ticks are coalescing by the broadcaster, allowed.
 */
async function runSoak(opts, ctl) {
  const url = urlsOf(opts)[0];
  const N = opts.clients;
  const KINDS = ['tick_private', 'tick_shared'];
  const SUB_ID = 'soak';
  const stats = {
    connects: 0, connect_errors: 0, subscribe_errors: 0, dropped_clean: 0, dropped_reset: 0,
    bumps: 0, acked: 0, bad_acks: 0, bump_errors: 0, updates: 0, update_errors: 0, stale: 0,
    unexpected_disconnects: 0,
  };
  const active = new Set(); // clients subscribed and not (being) dropped
  let pendingConnects = 0;
  let seq = 0; // next tick to bump (continues the server's)
  let lastAcked = -1;
  let bumpsInFlight = 0;
  const errors = []; // the first few error messages, for the report
  const note = (what) => {
    if (errors.length < 20) errors.push(what);
  };

  function open() {
    const sock = io(url + opts.namespace, {
      transports: ['websocket'], forceNew: true, reconnection: false, timeout: 20000,
    });
    return new Promise((resolve, reject) => {
      sock.once('connect', () => {
        sock.off('connect_error');
        resolve(sock);
      });
      sock.once('connect_error', (err) => {
        sock.close();
        reject(err);
      });
    });
  }

  /** Connect one client and subscribe it to `kind`; resolves to the client, or null. */
  async function addClient(kind) {
    pendingConnects++;
    try {
      let sock;
      try {
        sock = await open();
      } catch (err) {
        stats.connect_errors++;
        note(`connect: ${err.message}`);
        return null;
      }
      stats.connects++;
      const c = { sock, kind, last: -Infinity, updates: 0, dropping: false };
      sock.on('sbio:update', (u) => {
        if (!u || u.id !== SUB_ID) return;
        const d = u.data;
        if (u.error || !d || typeof d.seq !== 'number') {
          stats.update_errors++;
          note(`update: ${JSON.stringify(u).slice(0, 200)}`);
          return;
        }
        stats.updates++;
        c.updates++;
        if (d.seq <= c.last) stats.stale++;
        else c.last = d.seq;
      });
      sock.on('disconnect', (reason) => {
        if (!c.dropping) {
          stats.unexpected_disconnects++;
          note(`disconnect: ${reason}`);
          active.delete(c);
        }
      });
      let resp;
      try {
        resp = await sock.timeout(opts.ackTimeout * 1000)
          .emitWithAck('sbio:subscribe', { id: SUB_ID, event: kind, args: [] });
      } catch (err) {
        resp = { ok: false, error: String(err && err.message) };
      }
      if (!resp || resp.ok !== true || !resp.data || typeof resp.data.seq !== 'number') {
        stats.subscribe_errors++;
        note(`subscribe: ${JSON.stringify(resp).slice(0, 200)}`);
        c.dropping = true;
        sock.close();
        return null;
      }
      if (resp.data.seq > c.last) c.last = resp.data.seq;
      if (c.last + 1 > seq) seq = c.last + 1;
      if (!sock.connected) return null; // dropped by the server meanwhile (counted)
      active.add(c);
      return c;
    } finally {
      pendingConnects--;
    }
  }

  /** Drop client c: cleanly (socket.io disconnect), or by resetting its TCP connection. */
  function drop(c, reset) {
    c.dropping = true;
    active.delete(c);
    if (reset) {
      stats.dropped_reset++;
      const engine = c.sock.io && c.sock.io.engine;
      const tcp = engine && engine.transport && engine.transport.ws && engine.transport.ws._socket;
      if (tcp && typeof tcp.resetAndDestroy === 'function') tcp.resetAndDestroy();
      else if (tcp) tcp.destroy();
      setTimeout(() => c.sock.close(), 1000); // socket.io-client's own cleanup, later
    } else {
      stats.dropped_clean++;
      c.sock.disconnect();
    }
  }

  async function addMany(kinds) {
    let next = 0;
    const worker = async () => {
      while (next < kinds.length) await addClient(kinds[next++]);
    };
    await Promise.all(Array.from({ length: Math.min(opts.connectConcurrency, kinds.length) }, worker));
  }

  const t0 = performance.now();
  const elapsed = () => Math.round(performance.now() - t0) / 1000;
  function sample(phase) {
    let onFinal = 0;
    for (const c of active) if (c.last === seq - 1) onFinal++;
    ctl.sample({ phase, t: elapsed(), active: active.size, pending_connects: pendingConnects,
                 seq, ...stats, on_last_tick: onFinal });
  }

  // -- warm-up: every code path once, then the runner's baseline
  {
    const w = await open();
    const seen = {};
    w.on('sbio:update', (u) => {
      if (u && u.data) seen[u.id] = u.data.seq;
    });
    for (const kind of KINDS) {
      const r = await w.timeout(opts.ackTimeout * 1000)
        .emitWithAck('sbio:subscribe', { id: kind, event: kind, args: [] });
      if (!r || r.ok !== true) throw new Error(`warm-up subscribe ${kind}: ${JSON.stringify(r)}`);
      if (r.data.seq + 1 > seq) seq = r.data.seq + 1;
    }
    const s = seq++;
    const r = await w.timeout(opts.ackTimeout * 1000).emitWithAck('bump', { seq: s, t: performance.now() });
    if (!r || r.ok !== true) throw new Error(`warm-up bump: ${JSON.stringify(r)}`);
    const until = performance.now() + opts.drainTimeout * 1000;
    while (!KINDS.every((k) => seen[k] === s) && performance.now() < until) await sleep(20);
    if (!KINDS.every((k) => seen[k] === s)) throw new Error('warm-up: no update for the bump');
    w.disconnect();
  }
  await ctl.mark('baseline');

  // -- connect the driver and the population
  let closing = false;
  const driver = await open();
  driver.on('disconnect', (reason) => {
    if (!closing) {
      stats.unexpected_disconnects++;
      note(`driver disconnect: ${reason}`);
    }
  });
  const initial = Array.from({ length: N }, (_, i) => KINDS[i % 2]);
  await addMany(initial);
  ctl.progress(`connected and subscribed ${active.size} of ${N} in ${elapsed()}s`);
  if (active.size !== N) throw new Error(`only ${active.size} of ${N} subscribed: ${errors.join('; ')}`);

  function bump() {
    const s = seq++;
    stats.bumps++;
    bumpsInFlight++;
    driver.timeout(opts.ackTimeout * 1000).emitWithAck('bump', { seq: s, t: performance.now() }).then(
      (resp) => {
        stats.acked++;
        if (!resp || resp.ok !== true) stats.bad_acks++;
        if (s > lastAcked) lastAcked = s;
      },
      () => stats.bump_errors++,
    ).finally(() => bumpsInFlight--);
  }

  // -- soak: bumps at --rate, churn every second, samples every --sample-interval
  const soakStart = performance.now();
  const end = soakStart + opts.duration * 1000;
  const interval = 1000 / opts.rate;
  let nextBump = soakStart;
  let nextChurn = soakStart + 1000;
  let nextSample = soakStart;
  const churning = [];
  while (performance.now() < end) {
    const now = performance.now();
    if (now >= nextSample) {
      sample('soak');
      nextSample += opts.sampleInterval * 1000;
    }
    if (now >= nextBump) {
      if (bumpsInFlight < opts.window) bump();
      nextBump += interval;
      if (nextBump < now - 1000) nextBump = now; // the generator fell behind: do not burst
    }
    if (now >= nextChurn) {
      nextChurn += 1000;
      const victims = [];
      for (const c of active) {
        if (victims.length >= opts.churn) break;
        victims.push(c);
      }
      // the oldest first (a Set iterates in insertion order): every client lives about
      // clients / churn seconds
      victims.forEach((c, i) => drop(c, i % 2 === 1));
      churning.push(addMany(victims.map((c) => c.kind)));
      if (churning.length > 50) await Promise.all(churning.splice(0, churning.length - 50));
    }
    const wait = Math.min(nextBump, nextChurn, nextSample) - performance.now();
    if (wait > 0) await sleep(Math.min(wait, end - performance.now()));
  }
  await Promise.all(churning);
  const soakSeconds = (performance.now() - soakStart) / 1000;
  sample('soak-end');

  // -- drain: the last bump acked, every connection on it
  const finalSeq = seq - 1;
  const drainStart = performance.now();
  const drainUntil = drainStart + opts.drainTimeout * 1000;
  const behind = () => {
    let n = 0;
    for (const c of active) if (c.last !== finalSeq) n++;
    return n;
  };
  while ((bumpsInFlight > 0 || behind() > 0) && performance.now() < drainUntil) await sleep(50);
  const drainSeconds = (performance.now() - drainStart) / 1000;
  const lagging = behind();
  let maxLast = -Infinity;
  for (const c of active) if (c.last > maxLast) maxLast = c.last;
  sample('drained');
  const byKind = {};
  for (const kind of KINDS) byKind[kind] = { clients: 0, on_final: 0 };
  for (const c of active) {
    byKind[c.kind].clients++;
    if (c.last === finalSeq) byKind[c.kind].on_final++;
  }
  await ctl.mark('drained');

  // -- close everything: half cleanly, half by a reset; the driver cleanly
  closing = true;
  const remaining = [...active];
  const gone = remaining.map((c) => new Promise((resolve) => {
    if (!c.sock.connected) return resolve();
    c.sock.once('disconnect', resolve);
  }));
  remaining.forEach((c, i) => drop(c, i % 2 === 1));
  driver.disconnect();
  await Promise.race([Promise.all(gone), sleep(10000)]);
  await sleep(1100); // the delayed socket.io-client cleanups of the reset ones

  const finalOk = lagging === 0 && active.size === 0 && remaining.length === N;
  return {
    connect: { clients: N },
    measure: {
      unit: 'updates',
      seconds: Math.round(soakSeconds * 1000) / 1000,
      ops: stats.updates,
      ops_per_s: Math.round(stats.updates / soakSeconds),
      latency_ms: latencySummary([]),
      drain_seconds: Math.round(drainSeconds * 1000) / 1000,
    },
    checks: {
      clients: N,
      final_seq: finalSeq,
      clients_at_end: remaining.length,
      on_final_value: remaining.length - lagging,
      lagging_after_drain: lagging,
      max_last_seen: maxLast,
      by_handler: byKind,
      churned: stats.dropped_clean + stats.dropped_reset - remaining.length,
      ...stats,
      errors_seen: errors,
      ok:
        finalOk &&
        stats.connect_errors === 0 &&
        stats.subscribe_errors === 0 &&
        stats.update_errors === 0 &&
        stats.stale === 0 &&
        stats.unexpected_disconnects === 0 &&
        stats.bump_errors === 0 &&
        stats.bad_acks === 0 &&
        stats.acked === stats.bumps,
    },
    client_cpu: null,
  };
}

// --------------------------------------------------------------- registry --
/*
 * Scenario registry. Each entry: async (opts, ctl) -> result object with
 * `connect`, `measure` ({unit, seconds, ops, ops_per_s, latency_ms, ...}),
 * `checks` ({ok, ...}) and `client_cpu`. The runner (bench/run.py) reads
 * only those keys, so a new scenario needs no runner changes beyond its
 * entry in run.py's SCENARIOS.
 */
const SCENARIOS = {
  echo: runEcho,
  fanout: runFanout,
  live: runLive, // needs sbio's live data (sbio.subscribes) and the bench `bump` handler
  soak: runSoak, // sbio only: churn for --duration seconds (bench/run.py --soak)
};

// ------------------------------------------------------------------- main --
async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`loadgen: ${err.message}\n`);
    process.exit(64);
  }
  const scenario = SCENARIOS[opts.scenario];
  if (!scenario) {
    process.stderr.write(`loadgen: unknown scenario ${opts.scenario} (${Object.keys(SCENARIOS).join(', ')})\n`);
    process.exit(64);
  }
  const ctl = new Control(opts.sync);
  const started = Date.now();
  const finish = (obj, code) => {
    process.stdout.write(JSON.stringify(obj) + '\n');
    for (const s of ALL_SOCKETS) s.close();
    process.exit(code);
  };
  const hard = setTimeout(
    () => finish({ scenario: opts.scenario, error: `hard timeout after ${opts.timeout}s` }, 2),
    opts.timeout * 1000,
  );
  try {
    const result = await scenario(opts, ctl);
    clearTimeout(hard);
    const { sync, timeout, url, ...params } = opts;
    finish({ scenario: opts.scenario, url, params, elapsed_s: (Date.now() - started) / 1000, ...result }, 0);
  } catch (err) {
    finish({ scenario: opts.scenario, error: String(err && err.message ? err.message : err) }, 1);
  }
}

main();
