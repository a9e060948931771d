#!/usr/bin/env python3
"""A broadcast chat backend for examples/chat.sh, on the standard library only.

GET / answers the chat page; GET /ws upgrades to a WebSocket, and every text
message one client sends goes to every connected client. It speaks just
enough of RFC 6455 for an example (text, ping, close; no fragments): the
gateway in front of it is what enforces limits and keepalive.
Prints "chat backend on HOST:PORT" once it listens (--port 0 picks one).
"""
import argparse, asyncio, base64, hashlib, os, struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAGE = open(os.path.join(os.path.dirname(__file__), "index.html"), "rb").read()
clients = set()


def frame(opcode, payload):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else bytes(4)
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


async def serve(reader, writer):
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    if path != "/ws" or headers.get("upgrade", "").lower() != "websocket":
        body = PAGE if path == "/" else b"not found\n"
        status = "200 OK" if path == "/" else "404 Not Found"
        kind = "text/html; charset=utf-8" if path == "/" else "text/plain"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()
        return
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()).decode()
    writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    clients.add(writer)
    try:
        while True:
            opcode, data = await read_frame(reader)
            if opcode == 0x1:
                for c in list(clients):
                    c.write(frame(0x1, data))
            elif opcode == 0x9:
                writer.write(frame(0xA, data))
            elif opcode == 0x8:
                writer.write(frame(0x8, data[:2]))
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        clients.discard(writer)
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9000)
    port = ap.parse_args().port
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print("chat backend on %s:%d" % server.sockets[0].getsockname()[:2], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
