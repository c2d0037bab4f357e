// sbio.js live subscriptions against a real sbio server.
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { Recorder, useServer, sleep } = require("./harness.js");

const { open } = useServer();

async function loggedIn() {
  const conn = open();
  await conn.call("login", "ann", "secret");
  return conn;
}

/** One more round trip on each connection, then a short grace period: any
 * push already on its way has arrived by then. */
async function settle(...connections) {
  await Promise.all(connections.map((c) => c.call("echo", "sync")));
  await sleep(150);
}

test("subscribe: first result, then the change another connection makes", async () => {
  const a = await loggedIn();
  const b = await loggedIn();
  const rec = new Recorder("counter");
  const id = a.subscribe("counter", [], rec.fn);
  assert.match(id, /^s\d+$/);
  const [first, trigger] = await rec.waitCount(1);
  assert.equal(typeof first, "number");
  assert.equal(trigger, "subscribe");

  assert.equal(await b.call("bump"), first + 1);
  const [second, pushTrigger] = await rec.waitCount(2);
  assert.equal(second, first + 1);
  assert.equal(typeof pushTrigger, "string");
  a.unsubscribe(id);
});

test("exactly one callback per change, none for unchanged results", async () => {
  const a = await loggedIn();
  const b = await loggedIn();
  const counter = new Recorder("counter");
  const parity = new Recorder("parity");
  a.subscribe("counter", [], counter.fn);
  a.subscribe("counter_parity", [], parity.fn);
  const [n0] = await counter.waitCount(1);
  await parity.waitCount(1);
  for (let i = 1; i <= 4; i++) {
    assert.equal(await b.call("bump"), n0 + i);
    await counter.waitCount(1 + i); // one push per bump (no coalescing across separate calls)
  }
  await settle(a, b);
  assert.deepEqual(
    counter.values.map((v) => v[0]),
    [n0, n0 + 1, n0 + 2, n0 + 3, n0 + 4]
  );
  // parity flips on every bump: 4 changes after the first result
  assert.deepEqual(
    parity.values.map((v) => v[0]),
    [0, 1, 2, 3, 4].map((i) => (n0 + i) % 2)
  );
});

test("unsubscribe stops the callbacks (one id, several, an array)", async () => {
  const a = await loggedIn();
  const b = await loggedIn();
  const gone = new Recorder("gone");
  const gone2 = new Recorder("gone2");
  const kept = new Recorder("kept");
  const id1 = a.subscribe("counter", [], gone.fn);
  const id2 = a.subscribe("counter", [], gone2.fn);
  a.subscribe("counter", [], kept.fn);
  await Promise.all([gone.waitCount(1), gone2.waitCount(1), kept.waitCount(1)]);

  assert.equal(a.unsubscribe([id1, id2]), 2);
  await b.call("bump");
  await kept.waitCount(2); // the push round reached this connection...
  await b.call("bump");
  await kept.waitCount(3);
  await settle(a, b);
  assert.equal(gone.values.length, 1, "...but not the unsubscribed callbacks");
  assert.equal(gone2.values.length, 1);
  assert.equal(a.unsubscribe(id1), 0);
});

test("a forbidden subscription reports to onError; resubscribe() after login delivers", async () => {
  const a = open();
  const rec = new Recorder("counter");
  const errors = new Recorder("errors");
  const id = a.subscribe("counter", [], rec.fn, { onError: errors.fn });
  const err = await errors.waitCount(1);
  assert.equal(err.code, "forbidden");
  assert.equal(err.subscription, id);
  await a.call("login", "ann", "secret");
  a.resubscribe(id);
  const [value, trigger] = await rec.waitCount(1);
  assert.equal(typeof value, "number");
  assert.equal(trigger, "resubscribe");
});

test("subscribing to something that is not subscribable or does not exist fails", async () => {
  const a = await loggedIn();
  const errors = new Recorder("errors");
  a.subscribe("no_such_thing", [], () => assert.fail("no data"), { onError: errors.fn });
  const err = await errors.waitCount(1);
  assert.ok(["not_found", "bad_request"].includes(err.code), err.code);
});
