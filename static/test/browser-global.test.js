// sbio.js as a browser page loads it: plain <script> tags, global `sbio`,
// socket.io-client's browser build (the file the server serves under
// /static/node_modules/socket.io-client/dist/socket.io.min.js) as global `io`.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");

const SBIO_JS = fs.readFileSync(path.join(__dirname, "..", "sbio.js"), "utf8");
const IO_JS = fs.readFileSync(path.join(__dirname, "..", "node_modules", "socket.io-client", "dist", "socket.io.min.js"), "utf8");

function page() {
  const location = {
    protocol: "http:",
    host: "127.0.0.1:8282",
    hostname: "127.0.0.1",
    port: "8282",
    href: "http://127.0.0.1:8282/",
  };
  // No require/module/define: the scripts see only what a page has.
  return vm.createContext({ location, setTimeout, clearTimeout, console, Promise });
}

function load(ctx, source, name) {
  vm.runInContext(source, ctx, { filename: name });
}

test("script tags: socket.io.min.js then sbio.js give a global sbio on the page's origin", () => {
  const ctx = page();
  load(ctx, IO_JS, "socket.io.min.js");
  load(ctx, SBIO_JS, "sbio.js");
  assert.equal(typeof ctx.sbio.connect, "function");
  assert.equal(ctx.sbio.version, require("../sbio.js").version);
  const conn = ctx.sbio.connect("/board", { autoConnect: false });
  assert.equal(conn.socket.nsp, "/board");
  assert.equal(conn.socket.io.uri, "http://127.0.0.1:8282/board");
  assert.equal(conn.status, "closed");
});

test("the order of the two script tags does not matter; a missing socket.io is named", () => {
  const ctx = page();
  load(ctx, SBIO_JS, "sbio.js");
  assert.throws(() => ctx.sbio.connect("/board", { autoConnect: false }), /socket\.io-client/);
  load(ctx, IO_JS, "socket.io.min.js");
  assert.equal(ctx.sbio.connect("/board", { autoConnect: false }).socket.nsp, "/board");
});
