// A Socket.IO server for tests/it/socketio.rs: `node server.js PORT` (0 for
// an ephemeral port) on 127.0.0.1. The first line on stdout is
// `listening port=N`; then one line per event, for the test to read:
//
//   http method=GET transport=polling forwarded=127.0.0.1   each plain HTTP request
//   upgrade transport=websocket forwarded=127.0.0.1         each WebSocket upgrade request
//   open sid=SID transport=polling                          an Engine.IO connection
//   upgraded sid=SID transport=websocket                    its transport upgraded
//   connect sid=SID                                         a Socket.IO connection on it
//   echo sid=SID transport=websocket                        an `echo` event arrived
//   disconnect sid=SID reason=...
//
// `forwarded` is the request's X-Forwarded-For (`-` without one): a request
// that came through the gateway says so. The `echo` event is acked with
// `{ payload, transport }` and the payload is also emitted back as `echoed`.
// Exits when its stdin closes, so it never outlives the test.
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");

const log = (line) => process.stdout.write(line + "\n");
const port = Number(process.argv[2] ?? 0);

const httpServer = http.createServer();
const io = new Server(httpServer);

const query = (req) => new URL(req.url, "http://x").searchParams;
const forwarded = (req) => req.headers["x-forwarded-for"] ?? "-";
// Prepended after engine.io has attached (it takes over the `request`
// listeners), so every request is logged before engine.io sees it.
httpServer.prependListener("request", (req) => {
  log(`http method=${req.method} transport=${query(req).get("transport")} forwarded=${forwarded(req)}`);
});
httpServer.prependListener("upgrade", (req) => {
  log(`upgrade transport=${query(req).get("transport")} forwarded=${forwarded(req)}`);
});

// Transports are Engine.IO's: a client may upgrade before its Socket.IO
// connection exists (python-socketio upgrades inside connect()).
io.engine.on("connection", (conn) => {
  log(`open sid=${conn.id} transport=${conn.transport.name}`);
  conn.on("upgrade", (transport) => log(`upgraded sid=${conn.id} transport=${transport.name}`));
});
io.on("connection", (socket) => {
  const sid = socket.conn.id;
  log(`connect sid=${sid}`);
  socket.on("echo", (payload, ack) => {
    const transport = socket.conn.transport.name;
    log(`echo sid=${sid} transport=${transport}`);
    socket.emit("echoed", payload);
    if (typeof ack === "function") ack({ payload, transport });
  });
  socket.on("disconnect", (reason) => log(`disconnect sid=${sid} reason=${reason}`));
});

httpServer.listen(port, "127.0.0.1", () => log(`listening port=${httpServer.address().port}`));
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
