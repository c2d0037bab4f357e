#!/usr/bin/env node
/*
 * Reference Node socket.io server with the benchmark contract (see
 * bench/servers.py): namespace /bench, `echo(payload)` acks
 * {ok: true, data: payload}, `fanout(payload)` broadcasts `fan` with the
 * payload to every connection of the namespace and acks {ok: true, data: null}.
 *
 *   node bench/node_server.js --port P [--host 127.0.0.1]
 */
'use strict';

const http = require('http');
const { Server } = require('socket.io');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '8282'));

const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });
const bench = io.of('/bench');

bench.on('connection', (socket) => {
  socket.on('echo', (payload, ack) => {
    if (typeof ack === 'function') ack({ ok: true, data: payload });
  });
  socket.on('fanout', (payload, ack) => {
    bench.emit('fan', payload);
    if (typeof ack === 'function') ack({ ok: true, data: null });
  });
});

httpServer.listen(port, host, () => {
  process.stdout.write(`listening ${host}:${port}\n`);
});

function stop() {
  io.close();
  httpServer.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
