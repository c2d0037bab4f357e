// sbio.js delta subscriptions (`delta: true`) against a real sbio server: the
// callback gets the same whole values as a plain subscription's, after a
// random (seeded) sequence of changes; and applyPatch itself.
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const sbio = require("../sbio.js");
const { Recorder, useServer } = require("./harness.js");

const { open } = useServer();

/** A small deterministic PRNG (mulberry32): the same sequence on every run. */
function prng(seed) {
  return function () {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomCard(rand, id) {
  const card = { id, column: ["To do", "Doing", "Done"][Math.floor(rand() * 3)], title: "card " + Math.floor(rand() * 1000) };
  const r = rand();
  if (r < 0.2) card.note = null;
  else if (r < 0.4) card.note = r < 0.3;
  else if (r < 0.5) card.tags = ["a", null, 1.5].slice(0, Math.floor(rand() * 4));
  return card;
}

/** The next board: one edit a user could make (or, now and then, a new board). */
function edit(board, rand, nextId) {
  board = JSON.parse(JSON.stringify(board));
  const i = Math.floor(rand() * board.length);
  const action = board.length ? Math.floor(rand() * 6) : 0;
  if (action === 0) board.splice(Math.floor(rand() * (board.length + 1)), 0, randomCard(rand, nextId));
  else if (action === 1) board.splice(i, 1);
  else if (action === 2) board.splice(Math.floor(rand() * board.length), 0, board.splice(i, 1)[0]);
  else if (action === 3) board[i].column = ["To do", "Doing", "Done"][Math.floor(rand() * 3)];
  else if (action === 4) delete board[i].note;
  else board = Array.from({ length: Math.floor(rand() * 30) }, (_, k) => randomCard(rand, nextId + k));
  return board;
}

async function waitFor(predicate, what, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 5));
  }
}

for (const event of ["deck", "shared_deck"]) {
  test(`delta: ${event}: delta and whole subscribers get identical values after random changes`, async () => {
    const a = open();
    const driver = open();
    await a.call("login", "ann", "secret");
    await driver.call("login", "bob", "secret");
    const rand = prng(event === "deck" ? 17 : 18);
    let board = Array.from({ length: 40 }, (_, k) => randomCard(rand, k));
    await driver.call("set_deck", board);

    const delta = new Recorder("delta");
    const whole = new Recorder("whole");
    const patches = [];
    a.socket.on("sbio:update", (msg) => {
      if (msg && msg.patch) patches.push(msg);
    });
    a.subscribe(event, [], delta.fn, { delta: true });
    a.subscribe(event, [], whole.fn);
    await Promise.all([delta.waitCount(1), whole.waitCount(1)]);
    const last = (rec) => rec.values[rec.values.length - 1][0];

    for (let step = 0; step < 60; step++) {
      board = edit(board, rand, 1000 + step * 40);
      await driver.call("set_deck", board);
      const want = sbio._canonical(board);
      await waitFor(() => sbio._canonical(last(delta)) === want && sbio._canonical(last(whole)) === want, `step ${step}`);
      assert.deepEqual(last(delta), last(whole));
    }
    assert.deepEqual(delta.values.map((v) => v[0]), whole.values.map((v) => v[0]));
    assert.ok(patches.length > 10, `deltas were used (${patches.length} patches)`);
  });
}

test("delta: a value handed to the callback is never changed by a later patch", async () => {
  const a = open();
  const driver = open();
  await a.call("login", "ann", "secret");
  await driver.call("login", "bob", "secret");
  const board = Array.from({ length: 20 }, (_, k) => ({ id: k, column: "To do", title: "card " + k }));
  await driver.call("set_deck", board);
  const rec = new Recorder("delta");
  a.subscribe("deck", [], rec.fn, { delta: true });
  await rec.waitCount(1);
  for (let n = 0; n < 3; n++) {
    board[n].column = "Done";
    await driver.call("set_deck", board);
    await rec.waitCount(2 + n);
  }
  const values = rec.values.map((v) => v[0]);
  assert.deepEqual(values.map((v) => v.filter((c) => c.column === "Done").length), [0, 1, 2, 3]);
  assert.equal(values[3][10], values[2][10], "unchanged cards keep their identity");
});

test("applyPatch: every RFC 6902 operation, input unchanged, errors", () => {
  const doc = { a: [1, 2, 3], b: { c: "d" } };
  const out = sbio.applyPatch(doc, [
    { op: "add", path: "/a/-", value: 4 },
    { op: "add", path: "/a/0", value: 0 },
    { op: "remove", path: "/a/1" },
    { op: "replace", path: "/b/c", value: "e" },
    { op: "move", from: "/b/c", path: "/f" },
    { op: "copy", from: "/a", path: "/g" },
    { op: "add", path: "/g/0", value: "only in g" },
    { op: "test", path: "/f", value: "e" },
    { op: "add", path: "/h~1i", value: null },
  ]);
  assert.deepEqual(out, { a: [0, 2, 3, 4], b: {}, f: "e", g: ["only in g", 0, 2, 3, 4], "h/i": null });
  assert.deepEqual(doc, { a: [1, 2, 3], b: { c: "d" } });
  for (const [patch, message] of [
    [[{ op: "remove", path: "/x" }], /no member/],
    [[{ op: "add", path: "/a/9", value: 1 }], /out of range/],
    [[{ op: "add", path: "/a/01", value: 1 }], /not an array index/],
    [[{ op: "test", path: "/a/0", value: true }], /test failed/],
    [[{ op: "move", from: "/b", path: "/b/c" }], /into itself/],
    [[{ op: "nope", path: "" }], /unknown operation/],
  ]) {
    assert.throws(() => sbio.applyPatch(doc, patch), (err) => err.code === "bad_patch" && message.test(err.message));
  }
});
