// sbio.js calls, errors, connect refusal and status against a real sbio
// server (static/test/namespaces/jsdemo.py).
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useServer, waitEvent, waitStatus } = require("./harness.js");

const { open } = useServer();

async function loggedIn(options) {
  const conn = open(options);
  assert.deepEqual(await conn.call("login", "ann", "secret"), { user: "ann" });
  return conn;
}

test("call resolves with the handler's result", async () => {
  const conn = open();
  assert.equal(await conn.call("echo", 42), 42);
  assert.deepEqual(await conn.call("echo", { a: [1, "two", null] }), { a: [1, "two", null] });
  assert.equal(await conn.call("echo", null), null);
});

test("status events: connecting, open, closed", async () => {
  const conn = open();
  const seen = [];
  conn.on("status", (s) => seen.push(s));
  await waitStatus(conn, "open");
  conn.close();
  assert.deepEqual(seen, ["connecting", "open", "closed"]);
  await assert.rejects(conn.call("echo", 1), { code: "closed" });
});

test("an application error rejects with its code and message", async () => {
  const conn = open();
  await assert.rejects(conn.call("login", "ann", "wrong"), (err) => {
    assert.ok(err instanceof Error);
    assert.equal(err.code, "bad_credentials");
    assert.equal(err.message, "wrong password");
    return true;
  });
});

test("forbidden: a handler outside the ACL, allowed after login", async () => {
  const conn = open();
  await assert.rejects(conn.call("whoami"), { code: "forbidden" });
  await conn.call("login", "ann", "secret");
  assert.equal(await conn.call("whoami"), "ann");
});

test("not_found: no such handler", async () => {
  const conn = await loggedIn();
  await assert.rejects(conn.call("no_such_thing"), { code: "not_found" });
});

test("bad_request: wrong arguments, malformed event names", async () => {
  const conn = await loggedIn();
  await assert.rejects(conn.call("echo"), { code: "bad_request" });
  await assert.rejects(conn.call("echo", 1, 2, 3), { code: "bad_request" });
  await assert.rejects(conn.call("_private"), (err) => ["bad_request", "not_found"].includes(err.code));
});

test("internal: a handler that raises leaks no internals", async () => {
  const conn = await loggedIn();
  await assert.rejects(conn.call("boom"), (err) => {
    assert.equal(err.code, "internal");
    assert.doesNotMatch(err.message, /secret internals|Traceback/);
    return true;
  });
});

test("timeout: a call with no reply in time rejects with code timeout", async () => {
  const conn = await loggedIn({ callTimeout: 300 });
  const started = Date.now();
  await assert.rejects(conn.call("slow", 2), { code: "timeout" });
  assert.ok(Date.now() - started < 1500);
  assert.equal(await conn.timeout(5000).call("slow", 0.05), "done", "per-call timeout override");
  assert.equal(await conn.call("echo", "still usable"), "still usable");
});

test("an emit without ack that fails comes back as an 'error' event", async () => {
  const conn = await loggedIn();
  const got = waitEvent(conn, "error");
  conn.emit("no_such_thing", 1);
  const err = await got;
  assert.equal(err.event, "no_such_thing");
  assert.equal(err.code, "not_found");
});

test("connect refusal: status closed, connect_error with the server's message and data; calls reject", async () => {
  const conn = open({ auth: { token: "bad" } });
  const seen = [];
  conn.on("status", (s) => seen.push(s));
  const pending = conn.call("echo", 1); // made before the refusal arrives
  const err = await waitEvent(conn, "connect_error");
  assert.equal(err.code, "connection_refused");
  assert.equal(err.message, "bad token");
  assert.deepEqual(err.data, { code: 401 });
  assert.equal(conn.status, "closed");
  assert.deepEqual(seen, ["connecting", "closed"]);
  await assert.rejects(pending, { code: "connection_refused", message: "bad token" });
  await assert.rejects(conn.call("echo", 2), { code: "connection_refused" });

  // The same connection object can try again with better credentials.
  conn.connect({ token: "good" });
  await waitStatus(conn, "open");
  assert.equal(await conn.call("echo", 3), 3);
});

test("on_connect returning False or raising also refuses, without leaking internals or hanging", async () => {
  for (const token of ["false", "crash"]) {
    const conn = open({ auth: { token } });
    const err = await waitEvent(conn, "connect_error", () => true, 5000);
    assert.equal(err.code, "connection_refused", token);
    assert.equal(typeof err.message, "string");
    assert.doesNotMatch(err.message, /secret internals|Traceback/);
    assert.equal(conn.status, "closed");
  }
});

test("polling transport works too (the browser default: polling, then upgrade)", async () => {
  const conn = open({ transports: ["polling", "websocket"] });
  assert.equal(await conn.call("echo", "via default transports"), "via default transports");
});
