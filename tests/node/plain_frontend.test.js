// A front end written for a plain socket.io server (socket.io's chat tutorial
// and the protocol suite's events: names with spaces and dashes, callbacks
// acked with raw values), unchanged, against an sbio namespace of raw=True
// handlers. The server's URL is in SBIO_URL. Run by tests/test_node_client.py.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");

const URL = process.env.SBIO_URL;

function connect(options = {}) {
  const socket = io(URL, { reconnection: false, forceNew: true, timeout: 5000, ...options });
  const welcome = new Promise((resolve) => socket.once("welcome", resolve));
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve({ socket, welcome }));
    socket.once("connect_error", (err) => { socket.close(); reject(err); });
  });
}

for (const transports of [["websocket"], ["polling"]]) {
  const name = transports[0];

  test(`${name}: a plain socket.io front end works unchanged`, async () => {
    const { socket: ann, welcome } = await connect({ transports, auth: { name: "ann" } });
    const { socket: bob } = await connect({ transports, auth: { name: "bob" } });
    try {
      // emitted in on_connect: it arrives after the connection is up
      assert.deepEqual(await welcome, { name: "ann" });

      // the chat tutorial: emit "chat message", everyone gets "chat message"
      const heard = new Promise((resolve) => bob.once("chat message", (...args) => resolve(args)));
      ann.emit("chat message", "hello");
      assert.deepEqual(await heard, ["ann", "hello"]);

      // a callback acked with several raw values (the protocol suite's echo)
      const echoed = await new Promise((resolve) => {
        ann.emit("message-with-ack", 1, "2", { 3: [false] }, (...args) => resolve(args));
      });
      assert.deepEqual(echoed, [1, "2", { 3: [false] }]);

      // emitWithAck resolves with the single raw value
      assert.deepEqual(await ann.timeout(5000).emitWithAck("get-user", 42),
                       { id: 42, name: "user 42" });
      assert.equal(await ann.timeout(5000).emitWithAck("add numbers", 2, 3), 5);

      // an ack with no arguments
      const none = await new Promise((resolve) => ann.emit("mark read", 7, (...args) => resolve(args)));
      assert.deepEqual(none, []);

      // failures ack one object with an "error" member
      const missing = await ann.timeout(5000).emitWithAck("get-user", -1);
      assert.deepEqual(missing, { error: { code: "no_such_user", message: "no user -1" } });
      const bad = await ann.timeout(5000).emitWithAck("add numbers", "two", 3);
      assert.equal(bad.error.code, "bad_request");
      const unknown = await ann.timeout(5000).emitWithAck("does-not-exist");
      assert.equal(unknown.error.code, "not_found");

      // socket.send() is the "message" event
      const pong = new Promise((resolve) => ann.once("message", resolve));
      ann.send("ping");
      assert.equal(await pong, "pong: ping");
    } finally {
      ann.close();
      bob.close();
    }
  });
}
