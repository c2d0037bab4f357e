// A plain socket.io-client v4 (no sbio.js) against a real sbio server whose
// URL is in SBIO_URL: acks, every error code, sbio:error, refusals, over
// websocket and over polling. Run by tests/test_node_client.py.
const { test } = require("node:test");
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");

const URL = process.env.SBIO_URL;

function connect(namespace, options = {}) {
  const socket = io(URL + namespace, { reconnection: false, forceNew: true, timeout: 5000, ...options });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => { socket.close(); reject(err); });
  });
}

function call(socket, event, ...args) {
  return socket.timeout(5000).emitWithAck(event, ...args);
}

for (const transports of [["websocket"], ["polling"]]) {
  const name = transports[0];

  test(`${name}: login flow and every error code`, async () => {
    const s = await connect("/chat", { transports });
    try {
      assert.equal((await call(s, "whoami")).error.code, "forbidden");
      assert.deepEqual(await call(s, "login", "ann", "nope"), {
        ok: false, error: { code: "bad_credentials", message: "wrong user name or password" } });
      assert.deepEqual(await call(s, "login", "ann", "secret"), { ok: true, data: { user: "ann" } });
      assert.deepEqual(await call(s, "whoami"), { ok: true, data: "ann" });
      assert.equal((await call(s, "nope")).error.code, "not_found");
      assert.equal((await call(s, "bad name")).error.code, "not_found");
      assert.equal((await call(s, "sbio:bad")).error.code, "bad_request");
      assert.equal((await call(s, "join", 1, 2, 3)).error.code, "bad_request");
      assert.equal((await call(s, "join", 42)).error.code, "bad_request");
      const crash = await call(s, "crash");
      assert.deepEqual(crash, { ok: false, error: { code: "internal", message: "internal server error" } });
      const pushed = new Promise((resolve) => s.once("sbio:error", resolve));
      s.emit("nope");
      assert.deepEqual(await pushed, { event: "nope", code: "not_found", message: "no handler for event 'nope'" });
    } finally {
      s.close();
    }
  });

  test(`${name}: refused connection carries message and data`, async () => {
    await assert.rejects(connect("/chat", { transports, auth: { token: "bad" } }), (err) => {
      assert.equal(err.message, "bad token");
      assert.deepEqual(err.data, { code: 401 });
      return true;
    });
  });

  test(`${name}: unknown namespace`, async () => {
    await assert.rejects(connect("/nowhere", { transports }), { message: "Invalid namespace" });
  });
}
