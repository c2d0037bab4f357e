// sbio.js bookkeeping against a scripted fake socket (no server): the exact
// orderings of acks, pushes and reconnects that a live server produces only
// by chance. The same behaviour is then checked end to end against a real
// server in the other test files.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const sbio = require("../sbio.js");

class FakeManager {
  constructor() {
    this.handlers = {};
  }
  on(ev, fn) {
    (this.handlers[ev] = this.handlers[ev] || []).push(fn);
    return this;
  }
  fire(ev, ...args) {
    for (const fn of (this.handlers[ev] || []).slice()) fn(...args);
  }
}

/** Just enough of socket.io-client's Socket for sbio.js, driven by the test. */
class FakeSocket {
  constructor(url, opts) {
    this.url = url;
    this.opts = opts;
    this.auth = opts.auth;
    this.handlers = {};
    this.connected = false;
    this.subs = null;
    this.sendBuffer = [];
    this.acks = {};
    this.flags = {};
    this.sent = [];
    this.connectCalls = 0;
    this.io = new FakeManager();
  }
  get active() {
    return !!this.subs;
  }
  on(ev, fn) {
    (this.handlers[ev] = this.handlers[ev] || []).push(fn);
    return this;
  }
  off(ev, fn) {
    if (!fn) delete this.handlers[ev];
    else this.handlers[ev] = (this.handlers[ev] || []).filter((f) => f !== fn);
    return this;
  }
  connect() {
    this.subs = true;
    this.connectCalls++;
    return this;
  }
  disconnect() {
    const was = this.connected;
    this.subs = null;
    this.connected = false;
    if (was) this.fire("disconnect", "io client disconnect");
    return this;
  }
  timeout(ms) {
    this.flags.timeout = ms;
    return this;
  }
  emit(ev, ...args) {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    const rec = {
      ev,
      args,
      timeout: this.flags.timeout,
      reply: (envelope) => ack(null, envelope),
      fail: (message) => ack(new Error(message)),
    };
    this.flags = {};
    this.sent.push(rec);
    return this;
  }
  fire(ev, ...args) {
    for (const fn of (this.handlers[ev] || []).slice()) fn(...args);
  }
  // --- what the server / network does
  serverConnect() {
    this.connected = true;
    this.subs = true;
    this.fire("connect");
  }
  serverDrop() {
    this.connected = false;
    this.fire("disconnect", "transport close");
  }
  serverRefuse(message, data) {
    this.subs = null;
    const err = new Error(message);
    err.data = data;
    this.fire("connect_error", err);
  }
  push(ev, payload) {
    this.fire(ev, payload);
  }
  lastSent(ev) {
    const all = this.sent.filter((r) => r.ev === ev);
    return all[all.length - 1];
  }
}

function fakeConnect(options = {}) {
  let socket;
  const io = (url, opts) => (socket = new FakeSocket(url, opts));
  const conn = sbio.connect("/jsdemo", { url: "http://example.test:1/", io, ...options });
  return { conn, socket };
}

const tick = () => new Promise((r) => setImmediate(r));

test("connect() hands socket.io the namespace URL, the auth and the reconnect defaults", () => {
  const { conn, socket } = fakeConnect({ auth: { token: "t" }, transports: ["websocket"] });
  assert.equal(socket.url, "http://example.test:1/jsdemo");
  assert.deepEqual(socket.opts.auth, { token: "t" });
  assert.deepEqual(socket.opts.transports, ["websocket"]);
  assert.equal(socket.opts.autoConnect, false);
  assert.equal(socket.opts.reconnectionDelay, 500);
  assert.equal(socket.opts.reconnectionDelayMax, 10000);
  assert.equal(socket.opts.randomizationFactor, 0.5);
  assert.equal(socket.opts.callTimeout, undefined, "sbio's own options are not passed on");
  assert.equal(socket.connectCalls, 1);
  assert.equal(conn.status, "connecting");
});

test("connect(fullURL) works like io(url): the origin is the server, the path the namespace", () => {
  const urls = [];
  const io = (url, opts) => {
    urls.push(url);
    return new FakeSocket(url, opts);
  };
  const conn = sbio.connect("http://127.0.0.1:8282/board", { io });
  assert.equal(conn.namespace, "/board");
  sbio.connect("https://example.test/a/b?x=1#frag", { io });
  sbio.connect("http://example.test:9", { io }); // no path: the main namespace
  sbio.connect("WSS://example.test/ns/", { io });
  assert.deepEqual(urls, ["http://127.0.0.1:8282/board", "https://example.test/a/b?x=1",
                          "http://example.test:9/", "WSS://example.test/ns/"]);
  assert.throws(() => sbio.connect("http://a.test/x", { url: "http://b.test", io }), /not both/);
  // a relative namespace still needs the server
  sbio.connect("board", { url: "http://example.test:1/", io });
  assert.equal(urls[urls.length - 1], "http://example.test:1/board");
});

test("outside a browser the url option is required", () => {
  assert.throws(() => sbio.connect("/x", { io: () => new FakeSocket() }), /options\.url/);
});

test("status: the first 'connecting' reaches listeners attached after connect(), then 'open'", async () => {
  const { conn, socket } = fakeConnect();
  const seen = [];
  conn.on("status", (s) => seen.push(s));
  await tick();
  socket.serverConnect();
  assert.deepEqual(seen, ["connecting", "open"]);
  socket.serverDrop();
  assert.deepEqual(seen, ["connecting", "open", "connecting"]);
  conn.close();
  assert.deepEqual(seen, ["connecting", "open", "connecting", "closed"]);
});

test("call: envelope ok resolves data, error rejects with code and message", async () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const p1 = conn.call("echo", 1, "two");
  const rec = socket.lastSent("echo");
  assert.deepEqual(rec.args, [1, "two"]);
  assert.equal(rec.timeout, 10000);
  rec.reply({ ok: true, data: { x: 1 } });
  assert.deepEqual(await p1, { x: 1 });

  const p2 = conn.call("login", "ann", "nope");
  socket.lastSent("login").reply({ ok: false, error: { code: "bad_credentials", message: "wrong password" } });
  await assert.rejects(p2, (err) => {
    assert.ok(err instanceof Error);
    assert.ok(err instanceof sbio.SbioError);
    assert.equal(err.code, "bad_credentials");
    assert.equal(err.message, "wrong password");
    return true;
  });

  const p3 = conn.call("echo", 1);
  socket.lastSent("echo").reply(undefined);
  await assert.rejects(p3, { code: "bad_response" });

  const p4 = conn.call("echo", 1);
  socket.lastSent("echo").reply({ ok: true }); // data: null/absent is fine
  assert.equal(await p4, undefined);
});

test("call: socket.io's ack timeout becomes code 'timeout', a dropped connection 'disconnected'", async () => {
  const { conn, socket } = fakeConnect({ callTimeout: 250 });
  socket.serverConnect();
  const p1 = conn.call("slow", 5);
  assert.equal(socket.lastSent("slow").timeout, 250);
  socket.lastSent("slow").fail("operation has timed out");
  await assert.rejects(p1, { code: "timeout" });

  const p2 = conn.timeout(0).call("slow", 5);
  assert.equal(socket.lastSent("slow").timeout, 2147483647, "0 means no timeout");
  socket.lastSent("slow").fail("socket has been disconnected");
  await assert.rejects(p2, { code: "disconnected" });

  const p3 = conn.timeout(42).call("slow", 5);
  assert.equal(socket.lastSent("slow").timeout, 42);
  socket.lastSent("slow").reply({ ok: true, data: "done" });
  assert.equal(await p3, "done");

  await assert.rejects(conn.call(""), { code: "bad_request" });
  await assert.rejects(conn.call("disconnect"), { code: "bad_request" });
});

test("refusal: status closed, connect_error with message and data, waiting and later calls reject", async () => {
  const { conn, socket } = fakeConnect({ auth: { token: "bad" } });
  const errors = [];
  conn.on("connect_error", (e) => errors.push(e));
  const waiting = conn.call("echo", 1); // buffered by socket.io while connecting
  socket.sendBuffer.push({ id: 0 });
  socket.serverRefuse("bad token", { code: 401 });
  assert.equal(conn.status, "closed");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "connection_refused");
  assert.equal(errors[0].message, "bad token");
  assert.deepEqual(errors[0].data, { code: 401 });
  assert.deepEqual(socket.sendBuffer, [], "refused calls are never sent later");
  await assert.rejects(waiting, { code: "connection_refused", message: "bad token" });
  await assert.rejects(conn.call("echo", 2), (err) => err.code === "connection_refused" && err.data.code === 401);
  await assert.rejects(conn.ready(), { code: "connection_refused" });

  // Retry with a new token.
  conn.connect({ token: "good" });
  assert.deepEqual(socket.auth, { token: "good" });
  assert.equal(conn.status, "connecting");
  assert.equal(conn.refused, null);
  socket.serverConnect();
  assert.equal(conn.status, "open");
});

test("transient connect errors keep status 'connecting' and report code connect_failed", () => {
  const { conn, socket } = fakeConnect();
  const errors = [];
  conn.on("connect_error", (e) => errors.push(e.code));
  socket.fire("connect_error", new Error("xhr poll error")); // socket still active: socket.io retries
  assert.equal(conn.status, "connecting");
  assert.deepEqual(errors, ["connect_failed"]);
});

test("with reconnection disabled a drop or a failed attempt ends in 'closed'", async () => {
  const { conn, socket } = fakeConnect({ reconnection: false });
  socket.io.reconnection = () => false;
  const errors = [];
  conn.on("connect_error", (e) => errors.push(e.code));
  const waiting = conn.call("echo", 1);
  socket.fire("connect_error", new Error("xhr poll error"));
  assert.equal(conn.status, "closed");
  assert.deepEqual(errors, ["connect_failed"]);
  await assert.rejects(waiting, { code: "connect_failed" });
  conn.connect();
  socket.serverConnect();
  assert.equal(conn.status, "open");
  const inFlight = conn.call("slow", 1);
  socket.serverDrop();
  assert.equal(conn.status, "closed");
  await assert.rejects(inFlight, { code: "disconnected" });
});

test("close(): pending calls reject 'closed', later calls too, no reconnect", async () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const p = conn.call("slow", 10);
  conn.close();
  assert.equal(conn.status, "closed");
  assert.equal(socket.active, false);
  await assert.rejects(p, { code: "closed" });
  await assert.rejects(conn.call("echo", 1), { code: "closed" });
  socket.lastSent("slow").reply({ ok: true, data: "late" }); // ignored
});

test("sbio:error pushes reach 'error' listeners as errors with event, code, message", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const errors = [];
  conn.on("error", (e) => errors.push(e));
  socket.push("sbio:error", { event: "nope", code: "not_found", message: "no handler" });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].event, "nope");
  assert.equal(errors[0].code, "not_found");
  assert.equal(errors[0].message, "no handler");
});

test("subscribe: sent once open, first result, updates with trigger, unchanged results not repeated", () => {
  const { conn, socket } = fakeConnect();
  const got = [];
  const id = conn.subscribe("counter", [], (data, trigger) => got.push([data, trigger]));
  assert.equal(id, "s1");
  assert.equal(socket.sent.length, 0, "nothing is sent before the connection is open");
  socket.serverConnect();
  const rec = socket.lastSent("sbio:subscribe");
  assert.deepEqual(rec.args, [{ id: "s1", event: "counter", args: [] }]);
  rec.reply({ ok: true, data: { a: 1, b: 2 } });
  socket.push("sbio:update", { id: "s1", data: { b: 2, a: 1 }, trigger: "bump" }); // same, other key order
  socket.push("sbio:update", { id: "s1", data: { a: 2, b: 2 }, trigger: "bump" });
  assert.deepEqual(got, [
    [{ a: 1, b: 2 }, "subscribe"],
    [{ a: 2, b: 2 }, "bump"],
  ]);
  const id2 = conn.subscribe("counter", [7], () => {});
  assert.equal(id2, "s2");
  assert.deepEqual(socket.lastSent("sbio:subscribe").args, [{ id: "s2", event: "counter", args: [7] }]);
});

test("subscription errors go to onError (or the 'error' event); the next good result is delivered even if unchanged", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  const errs = [];
  conn.subscribe("counter", [], (d) => got.push(d), { onError: (e) => errs.push(e) });
  socket.lastSent("sbio:subscribe").reply({ ok: true, data: 5 });
  socket.push("sbio:update", { id: "s1", error: { code: "internal", message: "boom" } });
  socket.push("sbio:update", { id: "s1", data: 5 });
  assert.deepEqual(got, [5, 5]);
  assert.equal(errs.length, 1);
  assert.equal(errs[0].code, "internal");
  assert.equal(errs[0].subscription, "s1");

  const connErrors = [];
  conn.on("error", (e) => connErrors.push(e));
  conn.subscribe("secret", [], () => assert.fail("no data expected"));
  socket.lastSent("sbio:subscribe").reply({ ok: false, error: { code: "forbidden", message: "log in first" } });
  assert.equal(connErrors.length, 1);
  assert.equal(connErrors[0].code, "forbidden");
  assert.equal(connErrors[0].subscription, "s2");
  assert.equal(connErrors[0].event, "secret");
});

test("unsubscribe: one id, several, an array; late updates and acks are dropped", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  const ids = [1, 2, 3, 4].map((n) => conn.subscribe("counter", [n], (d) => got.push([n, d])));
  const acks = socket.sent.filter((r) => r.ev === "sbio:subscribe");
  acks[0].reply({ ok: true, data: "first" });
  assert.equal(conn.unsubscribe(ids[0]), 1);
  assert.deepEqual(socket.lastSent("sbio:unsubscribe").args, [{ ids: ["s1"] }]);
  assert.equal(conn.unsubscribe(ids[1], [ids[2], "nope"]), 2);
  assert.deepEqual(socket.lastSent("sbio:unsubscribe").args, [{ ids: ["s2", "s3"] }]);
  assert.equal(conn.unsubscribe(ids[1]), 0, "already gone");
  acks[1].reply({ ok: true, data: "late ack" });
  socket.push("sbio:update", { id: "s1", data: "late push" });
  socket.push("sbio:update", { id: "s4", data: "live" });
  assert.deepEqual(got, [
    [1, "first"],
    [4, "live"],
  ]);
  assert.deepEqual(conn.subscriptions(), ["s4"]);
});

test("reconnect: live subscriptions are re-sent; a fresh result is delivered, the same one is not", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const a = [];
  const b = [];
  conn.subscribe("counter", [], (d, t) => a.push([d, t]));
  conn.subscribe("other", [], (d, t) => b.push([d, t]));
  const gone = conn.subscribe("gone", [], () => assert.fail("unsubscribed"));
  let subs = socket.sent.filter((r) => r.ev === "sbio:subscribe");
  subs[0].reply({ ok: true, data: 1 });
  subs[1].reply({ ok: true, data: "x" });
  conn.unsubscribe(gone);

  socket.serverDrop();
  subs[2].fail("socket has been disconnected"); // what socket.io does to in-flight acks: ignored
  assert.equal(conn.status, "connecting");
  socket.sent = [];
  socket.serverConnect();
  subs = socket.sent.filter((r) => r.ev === "sbio:subscribe");
  assert.deepEqual(
    subs.map((r) => r.args[0].id),
    ["s1", "s2"],
    "only live subscriptions are re-sent"
  );
  subs[0].reply({ ok: true, data: 0 }); // changed while we were away
  subs[1].reply({ ok: true, data: "x" }); // unchanged: no duplicate callback
  assert.deepEqual(a, [
    [1, "subscribe"],
    [0, "resubscribe"],
  ]);
  assert.deepEqual(b, [["x", "subscribe"]]);
});

test("reconnect racing an update: a push that overtakes the resubscribe ack wins, the older ack is dropped", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  conn.subscribe("counter", [], (d) => got.push(d));
  socket.lastSent("sbio:subscribe").reply({ ok: true, data: 1 });
  socket.serverDrop();
  socket.serverConnect();
  const resend = socket.lastSent("sbio:subscribe");
  socket.push("sbio:update", { id: "s1", data: 3, trigger: "bump" });
  resend.reply({ ok: true, data: 2 }); // computed before the push: stale
  socket.push("sbio:update", { id: "s1", data: 4, trigger: "bump" });
  assert.deepEqual(got, [1, 3, 4]);
});

test("an ack from before a reconnect is ignored once the subscription was re-sent", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  conn.subscribe("counter", [], (d) => got.push(d));
  const first = socket.lastSent("sbio:subscribe");
  socket.serverDrop();
  socket.serverConnect();
  const second = socket.lastSent("sbio:subscribe");
  first.reply({ ok: true, data: "old" });
  second.reply({ ok: true, data: "new" });
  assert.deepEqual(got, ["new"]);
});

test("onConnect runs on every (re)connect before subscriptions are re-sent; status opens after it", async () => {
  const calls = [];
  let release;
  const { conn, socket } = fakeConnect({
    onConnect: (c, info) => {
      calls.push(info.reconnect);
      return new Promise((r) => (release = r));
    },
  });
  conn.subscribe("counter", [], () => {});
  socket.serverConnect();
  assert.deepEqual(calls, [false]);
  assert.equal(conn.status, "connecting");
  assert.equal(socket.lastSent("sbio:subscribe"), undefined);
  release();
  await tick();
  assert.equal(conn.status, "open");
  assert.ok(socket.lastSent("sbio:subscribe"));

  socket.serverDrop();
  socket.sent = [];
  socket.serverConnect();
  assert.deepEqual(calls, [false, true]);
  socket.serverDrop(); // dropped again while the hook runs
  release();
  await tick();
  assert.equal(socket.lastSent("sbio:subscribe"), undefined, "nothing sent for a connection that is gone");
  assert.equal(conn.status, "connecting");
});

test("a failing onConnect is reported as an error and the subscriptions are still re-sent", async () => {
  const { conn, socket } = fakeConnect({ onConnect: async () => Promise.reject(new Error("relogin failed")) });
  const errors = [];
  conn.on("error", (e) => errors.push(e));
  conn.subscribe("counter", [], () => {});
  socket.serverConnect();
  await tick();
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "on_connect_failed");
  assert.equal(conn.status, "open");
  assert.ok(socket.lastSent("sbio:subscribe"));
});

test("resubscribe() re-sends now (e.g. after login) and delivers the fresh result", () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  const errs = [];
  const id = conn.subscribe("counter", [], (d, t) => got.push([d, t]), { onError: (e) => errs.push(e.code) });
  socket.lastSent("sbio:subscribe").reply({ ok: false, error: { code: "forbidden", message: "" } });
  conn.resubscribe(id);
  socket.lastSent("sbio:subscribe").reply({ ok: true, data: 9 });
  assert.deepEqual(errs, ["forbidden"]);
  assert.deepEqual(got, [[9, "resubscribe"]]);
});

test("server events other than sbio's own reach conn.on listeners", () => {
  const { conn, socket } = fakeConnect();
  const got = [];
  conn.on("chat", (m) => got.push(m));
  socket.fire("chat", "hello");
  assert.deepEqual(got, ["hello"]);
});

test("a throwing callback does not break delivery to the others", async () => {
  const { conn, socket } = fakeConnect();
  socket.serverConnect();
  const got = [];
  const caught = [];
  sbio.onCallbackError = (e) => caught.push(e.message);
  try {
    conn.subscribe("a", [], () => {
      throw new Error("app bug");
    });
    conn.subscribe("b", [], (d) => got.push(d));
    const [ra, rb] = socket.sent.filter((r) => r.ev === "sbio:subscribe");
    ra.reply({ ok: true, data: 1 });
    rb.reply({ ok: true, data: 2 });
    assert.deepEqual(got, [2]);
    assert.deepEqual(caught, ["app bug"], "the exception is reported, not swallowed");
  } finally {
    sbio.onCallbackError = null;
  }
});

test("canonical encoding ignores key order", () => {
  assert.equal(sbio._canonical({ b: [1, { d: 1, c: 2 }], a: null }), '{"a":null,"b":[1,{"c":2,"d":1}]}');
});
