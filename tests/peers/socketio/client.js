// A socket.io-client with its default transports (long-polling first, then
// the upgrade to WebSocket): `node client.js URL`. It waits until it is
// connected and the engine has upgraded, emits `echo` with an ack, checks
// the ack and the server's `echoed` event, prints
// `ok first=polling transport=websocket` and exits 0. Any error, or no
// result within 10 s, is one line on stderr and exit 1.
"use strict";
const assert = require("node:assert/strict");
const { io } = require("socket.io-client");

const TIMEOUT_MS = 10_000;
const url = process.argv[2];
if (!url) {
  console.error("usage: node client.js URL");
  process.exit(2);
}

// Default options but one: fail at once instead of reconnecting.
const socket = io(url, { reconnection: false });
const transport = () => socket.io.engine?.transport?.name;
const fail = (msg) => {
  console.error(`socket.io client: ${msg} (connected=${socket.connected} transport=${transport()})`);
  process.exit(1);
};
setTimeout(() => fail(`no result after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();

let first;
const upgraded = new Promise((resolve) => {
  socket.io.on("open", () => {
    first = transport();
    socket.io.engine.on("upgrade", resolve);
    socket.io.engine.on("upgradeError", (e) => fail(`upgrade failed: ${e.message}`));
  });
});
const connected = new Promise((resolve) => socket.on("connect", resolve));
socket.on("connect_error", (e) => fail(`connect_error: ${e.message} ${e.description ?? ""}`));
socket.on("disconnect", (reason) => {
  if (reason !== "io client disconnect") fail(`disconnected: ${reason}`);
});

(async () => {
  await Promise.all([connected, upgraded]);
  const payload = { text: "héllo ✓", n: 42, bytes: Buffer.from([1, 2, 3]) };
  const echoed = new Promise((resolve) => socket.once("echoed", resolve));
  const ack = await socket.timeout(5000).emitWithAck("echo", payload);
  assert.deepEqual(ack, { payload, transport: "websocket" }, "the ack");
  assert.deepEqual(await echoed, payload, "the echoed event");
  console.log(`ok first=${first} transport=${transport()}`);
  socket.disconnect();
  process.exit(0);
})().catch((e) => fail(e.message));
