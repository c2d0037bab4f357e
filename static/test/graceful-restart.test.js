// A graceful stop (SIGTERM: the server closes every transport, with no
// socket.io DISCONNECT and no Engine.IO CLOSE packet) and a restart on the
// same port: sbio.js and a plain socket.io-client both reconnect by
// themselves. (reconnect.test.js does the same after a crash, SIGKILL; the
// Python clients are tested in tests/test_client.py.)
"use strict";

const { test, after } = require("node:test");
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");
const sbio = require("../sbio.js");
const { Recorder, startServer, sleep, waitStatus } = require("./harness.js");

let server;
const closers = [];

after(async () => {
  for (const close of closers) close();
  if (server) await server.stop();
});

/** Wait (bounded) until pred() holds. */
async function until(pred, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

for (const transports of [["websocket"], ["polling"]]) {
  const name = transports[0];

  test(`${name}: sbio.js and socket.io-client reconnect after SIGTERM and a restart`, async () => {
    server = await startServer();
    const conn = sbio.connect("/jsdemo", {
      url: server.url,
      transports,
      reconnectionDelay: 100,
      reconnectionDelayMax: 400,
      onConnect: (c) => c.call("login", "ann", "secret"),
    });
    closers.push(() => conn.close());
    const counter = new Recorder("counter");
    conn.subscribe("counter", [], counter.fn);

    const raw = io(server.url + "/jsdemo", {
      transports,
      forceNew: true,
      reconnectionDelay: 100,
      reconnectionDelayMax: 400,
    });
    closers.push(() => raw.close());
    const reasons = [];
    let connects = 0;
    raw.on("connect", () => connects++);
    raw.on("disconnect", (reason) => reasons.push(reason));

    await counter.waitCount(1);
    await conn.call("bump");
    await counter.waitCount(2);
    await until(() => connects === 1, "the plain client's connect");

    await server.stop("SIGTERM");
    await waitStatus(conn, "connecting");
    server = await startServer({ port: server.port });

    await waitStatus(conn, "open", 20000);
    assert.deepEqual(await counter.waitCount(3, 20000), [0, "resubscribe"]);
    await conn.call("bump");
    assert.deepEqual(await counter.waitCount(4), [1, "bump"]);

    await until(() => connects === 2, "the plain client's reconnect");
    assert.equal(reasons.length, 1);
    assert.notEqual(reasons[0], "io server disconnect");
    const answer = await raw.timeout(5000).emitWithAck("echo", "back");
    assert.deepEqual(answer, { ok: true, data: "back" });

    conn.close();
    raw.close();
    await server.stop();
    server = null;
  });
}
