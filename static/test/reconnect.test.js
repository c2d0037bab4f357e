// The server is killed and restarted on the same port: sbio.js reconnects
// by itself, re-runs onConnect (re-login), resubscribes, delivers the fresh
// result and never the same result twice.
"use strict";

const { test, after } = require("node:test");
const assert = require("node:assert/strict");
const sbio = require("../sbio.js");
const { Recorder, startServer, sleep, waitStatus } = require("./harness.js");

let server;
const conns = [];

after(async () => {
  for (const c of conns) c.close();
  if (server) await server.stop();
});

function open(url) {
  const conn = sbio.connect("/jsdemo", {
    url,
    transports: ["websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 400,
    // Connections start (and restart) logged out: log in again on every connect.
    onConnect: (c) => c.call("login", "ann", "secret"),
  });
  conns.push(conn);
  return conn;
}

test("calls across a server restart: in-flight ones reject, ones made while down are sent after", async () => {
  server = await startServer();
  const a = open(server.url);
  await waitStatus(a, "open");
  const statuses = [];
  a.on("status", (s) => statuses.push(s));

  const inFlight = assert.rejects(a.call("slow", 30), { code: "disconnected" });
  await sleep(100);
  await server.stop("SIGKILL");
  await inFlight;
  await waitStatus(a, "connecting");

  const buffered = a.call("echo", "sent after the restart");
  server = await startServer({ port: server.port });
  assert.equal(await buffered, "sent after the restart");
  await waitStatus(a, "open");
  assert.deepEqual(statuses, ["connecting", "open"]);
  assert.equal(await a.call("whoami"), "ann", "onConnect logged in again");
  await server.stop();
  server = null;
  a.close();
});

test(
  "subscriptions survive a server restart: fresh data, exactly one callback per change",
  async () => {
    server = await startServer();
    const a = open(server.url);
    const b = open(server.url);
    const counter = new Recorder("counter");
    const parity = new Recorder("parity");
    a.subscribe("counter", [], counter.fn);
    a.subscribe("counter_parity", [], parity.fn);
    await counter.waitCount(1);
    await parity.waitCount(1);
    assert.deepEqual(counter.values[0], [0, "subscribe"], "a fresh server counts from 0");

    await waitStatus(b, "open");
    await b.call("bump");
    await counter.waitCount(2);
    await b.call("bump");
    await counter.waitCount(3);
    await parity.waitCount(3);

    const statuses = [];
    a.on("status", (s) => statuses.push(s));
    await server.stop("SIGKILL");
    await waitStatus(a, "connecting");
    await sleep(300); // a few reconnect attempts fail meanwhile
    server = await startServer({ port: server.port });
    await waitStatus(a, "open", 15000);

    // The restarted server's counter is 0 again: that fresh result arrives
    // on resubscribe. The parity is 0 before and after: not repeated.
    await counter.waitCount(4, 10000);
    assert.deepEqual(counter.values[3], [0, "resubscribe"]);

    await waitStatus(b, "open", 15000);
    await b.call("bump");
    await counter.waitCount(5);
    await parity.waitCount(4);
    await Promise.all([a.call("echo", "sync"), b.call("echo", "sync")]);
    await sleep(300);

    assert.deepEqual(
      counter.values.map((v) => v[0]),
      [0, 1, 2, 0, 1]
    );
    assert.deepEqual(
      parity.values.map((v) => v[0]),
      [0, 1, 0, 1]
    );
    assert.deepEqual(statuses, ["connecting", "open"]);
  }
);
