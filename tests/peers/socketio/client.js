// A socket.io-client with its default transports (long-polling first, then
// the upgrade to WebSocket): `node client.js URL`. It waits until it is
// connected and the engine has upgraded, emits `echo` with an ack, checks
// the ack and the server's `echoed` event, prints
// `ok first=polling transport=websocket` and exits 0. Any error, or no
// result within 10 s, is one line on stderr and exit 1.
// `node client.js URL polling` allows long-polling only: no upgrade, and
// the events travel on polling requests (`ok first=polling transport=polling`).
// `--from ADDR` connects from that local address (polling requests and the
// WebSocket alike), as a client on another host would: for the gateway's
// `balance = "client_ip"` tests, from 127.0.0.2, 127.0.0.3...
"use strict";
const assert = require("node:assert/strict");
const http = require("node:http");
const { io } = require("socket.io-client");

const TIMEOUT_MS = 10_000;
const args = process.argv.slice(2);
const fromAt = args.indexOf("--from");
const from = fromAt >= 0 ? args.splice(fromAt, 2)[1] : undefined;
const [url, only] = args;
if (!url || (only && only !== "polling") || (fromAt >= 0 && !from)) {
  console.error("usage: node client.js URL [polling] [--from ADDR]");
  process.exit(2);
}
const upgrades = !only;

// Default options but one (two with `polling`): fail at once instead of
// reconnecting. With `--from`, an agent bound to that address carries the
// polling requests (xmlhttprequest-ssl) and the WebSocket (ws) both.
const local = from && { agent: new http.Agent({ keepAlive: true, localAddress: from }), localAddress: from };
const socket = io(url, { reconnection: false, ...(only && { transports: [only] }), ...local });
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
    if (upgrades) socket.io.engine.on("upgrade", resolve);
    else resolve();
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
  const expected = upgrades ? "websocket" : "polling";
  assert.deepEqual(ack, { payload, transport: expected }, "the ack");
  assert.deepEqual(await echoed, payload, "the echoed event");
  console.log(`ok first=${first} transport=${transport()}`);
  socket.disconnect();
  process.exit(0);
})().catch((e) => fail(e.message));
