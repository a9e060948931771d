#!/usr/bin/env python3
"""Writes the hand-made seed corpus under fuzz/corpus/<target>/.

The seeds are committed; this script is how they were made, so a change to a
target's input format can regenerate them (`python3 fuzz/make_seeds.py`).
It only writes files named here: what the fuzzer adds to a working copy of
the corpus never lands in the repository (see tests/fuzz.sh).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# request_head: raw request heads as a client sends them.
UPGRADE = (
    b"Host: gw.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
heads = {
    "upgrade": b"GET /chat?room=1 HTTP/1.1\r\n" + UPGRADE
    + b"Origin: https://app.example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n",
    "upgrade-early-data": b"GET / HTTP/1.1\r\n" + UPGRADE + b"\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    "absolute-form": b"GET ws://gw.example.com:8080/a/./b/../c HTTP/1.1\r\n" + UPGRADE + b"\r\n",
    "absolute-form-wss": b"GET wss://gw.example.com/chat HTTP/1.1\r\n" + UPGRADE + b"\r\n",
    "dot-segments": b"GET /a/%2e%2E/b//c/./../d?q=%20&r=/../ HTTP/1.1\r\n" + UPGRADE + b"\r\n",
    "encoded-slash": b"GET /a/%2F/../d HTTP/1.1\r\n" + UPGRADE + b"\r\n",
    "bare-lf": b"GET /x HTTP/1.1\nHost: a\nUpgrade: websocket\nConnection: upgrade\n\n",
    "http10": b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n",
    "cl-and-te": b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "cl-conflict": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5 ,5\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
    "te-not-last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "te-split": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: ,CHUNKED,\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a\r\nContent-Length : 1\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n",
    "obs-text": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9\t \r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "connect": b"CONNECT gw.example.com:443 HTTP/1.1\r\nHost: gw.example.com:443\r\n\r\n",
    "partial": b"GET /chat HTTP/1.1\r\nHost: gw.exa",
    "too-many-headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(65)) + b"\r\n",
}
for name, data in heads.items():
    write("request_head", name, data)


# proxy_header: PROXY protocol v1 lines and v2 headers, each with request bytes behind.
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command, family, body):
    return SIG + bytes([0x20 | command, family]) + struct.pack(">H", len(body)) + body


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


V4 = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack(">HH", 5555, 443)
V6 = bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000000002") + struct.pack(">HH", 4000, 443)
REQUEST = b"GET / HTTP/1.1\r\n"
proxies = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\r\n" + REQUEST,
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n" + REQUEST,
    "v1-tcp6-longest": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n" + REQUEST,
    "v1-unknown-addrs": b"PROXY UNKNOWN ::1 ::1 1 2\r\n",
    "v1-no-cr": b"PROXY TCP4 192.0.2.1 192.0.2.2 5555 443\n" + REQUEST,
    "v1-bad-port": b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 443\r\n",
    "v2-proxy-tcp4": v2(1, 0x11, V4) + b"\x16\x03\x01",
    "v2-proxy-tcp6": v2(1, 0x21, V6) + REQUEST,
    "v2-proxy-tcp4-tlvs": v2(1, 0x11, V4 + tlv(0x02, b"gw.example.com") + tlv(0x04, b"")) + REQUEST,
    "v2-proxy-udp4": v2(1, 0x12, V4),
    "v2-proxy-unix": v2(1, 0x31, b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")),
    "v2-proxy-unspec": v2(1, 0x00, b""),
    "v2-local": v2(0, 0x00, b"") + REQUEST,
    "v2-local-with-addrs": v2(0, 0x11, V4),
    "v2-short-body": v2(1, 0x11, V4)[:-3],
    "v2-bad-version": SIG + b"\x11\x11\x00\x0c" + V4,
    "not-proxy": REQUEST,
}
for name, data in proxies.items():
    write("proxy_header", name, data)


# frame_decoder: a settings byte, then reads (see fuzz_targets/frame_decoder.rs).
CLIENT, UPSTREAM = 0, 1
PARK_ALWAYS = 8
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])
TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


def frame(opcode, payload, fin=True, masked=True, rsv=0, length=None, key=KEY):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 1 << 16:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def reads(*chunks):
    """Each chunk is bytes (a read), "empty" (a read that finds nothing) or "park"."""
    out = b""
    for c in chunks:
        if c == "empty":
            out += b"\x00"
        elif c == "park":
            out += b"\xef"
        else:
            while c:
                part, c = c[:0xEE], c[0xEE:]
                out += bytes([len(part)]) + part
    return out


def big(n, fill):
    """A read of `n` bytes all `fill`."""
    return b"\xf0" + struct.pack(">H", n) + bytes([fill])


def cut(data, *at):
    """`data` cut into reads at the given offsets."""
    bounds = [0, *at, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


fragmented = (
    frame(TEXT, "héllo ".encode(), fin=False)
    + frame(PING, b"p")
    + frame(CONT, "wörld".encode())
    + frame(BINARY, bytes(range(256)) * 2)
)
frames = {
    "client-text": bytes([CLIENT]) + reads(frame(TEXT, b"hello")),
    "upstream-binary": bytes([UPSTREAM]) + reads(frame(BINARY, b"\x00\x01\x02", masked=False)),
    "client-fragmented-cut": bytes([CLIENT]) + reads(*cut(fragmented, 1, 5, 13, 14, 20, 300)),
    "client-fragmented-parked": bytes([CLIENT | PARK_ALWAYS]) + reads(*cut(fragmented, 3, 9), "empty", "park"),
    "client-fragmented-empty-reads": bytes([CLIENT]) + reads(fragmented[:7], "empty", fragmented[7:30], "park", fragmented[30:]),
    "client-close": bytes([CLIENT]) + reads(frame(TEXT, b"bye") + frame(CLOSE, struct.pack(">H", 1000) + b"done")),
    "upstream-close-empty": bytes([UPSTREAM]) + reads(frame(CLOSE, b"", masked=False)),
    "client-close-bad-code": bytes([CLIENT]) + reads(frame(CLOSE, struct.pack(">H", 1005))),
    "client-close-one-byte": bytes([CLIENT]) + reads(frame(CLOSE, b"\x03")),
    "client-close-bad-reason": bytes([CLIENT]) + reads(frame(CLOSE, struct.pack(">H", 1000) + b"\xff")),
    "client-ping-pong": bytes([CLIENT]) + reads(frame(PING, b"12345678") + frame(PONG, struct.pack(">Q", 42))),
    "upstream-ping": bytes([UPSTREAM]) + reads(frame(PING, b"x", masked=False)),
    # Autobahn 6.4.3: a text frame whose invalid UTF-8 arrives in a later read.
    "client-utf8-fail-fast": bytes([CLIENT | PARK_ALWAYS]) + reads(
        *cut(frame(TEXT, bytes.fromhex("cebae1bdb9cf83cebcceb5" "f4908080" "656469746564")), 6, 17, 21)),
    "client-utf8-split-char": bytes([CLIENT]) + reads(*cut(frame(TEXT, "€uro".encode()), 7, 8)),
    "client-unmasked": bytes([CLIENT]) + reads(frame(TEXT, b"hi", masked=False)),
    "upstream-masked": bytes([UPSTREAM]) + reads(frame(TEXT, b"hi")),
    "client-rsv1": bytes([CLIENT]) + reads(frame(TEXT, b"hi", rsv=0x40)),
    "client-reserved-opcode": bytes([CLIENT]) + reads(frame(3, b"")),
    "client-fragmented-ping": bytes([CLIENT]) + reads(frame(PING, b"", fin=False)),
    "client-continuation-first": bytes([CLIENT]) + reads(frame(CONT, b"x")),
    "client-new-message-inside": bytes([CLIENT]) + reads(frame(TEXT, b"a", fin=False) + frame(BINARY, b"b")),
    "client-too-big-small-limits": bytes([CLIENT | 2]) + reads(frame(BINARY, bytes(300))),
    "client-message-too-big": bytes([CLIENT | 2]) + reads(*(frame(BINARY if i == 0 else CONT, bytes(200), fin=i == 5) for i in range(6))),
    "client-64bit-length": bytes([CLIENT]) + reads(frame(BINARY, b"abc", length=1 << 63)),
    # A small frame (carried whole) and a large one (streamed in pieces).
    "upstream-small-split": bytes([UPSTREAM | PARK_ALWAYS]) + reads(*cut(frame(BINARY, bytes(1000), masked=False), 500)),
    "upstream-large-streamed": bytes([UPSTREAM])
    + reads(frame(BINARY, b"", masked=False, length=40000)[:4]) + big(20000, 0x41) + big(20000, 0x42),
    "client-large-text": bytes([CLIENT])
    + reads(frame(TEXT, b"", length=70000, key=bytes(4))[:14]) + big(65535, 0x61) + reads("park") + big(4465, 0x62),
}
for name, data in frames.items():
    write("frame_decoder", name, data)

# chunked_body: the first byte picks the read size, the rest is the body.
chunked = {
    "plain": b"\x03" + b"5\r\nhello\r\n0\r\n\r\n",
    "ext-trailer-pipelined": b"\x01" + b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n",
    "bare-lf": b"\x02" + b"5\nhello\r\n0\r\n\r\n",
    "fifteen-digits": b"\x07" + b"fffffffffffffff\r\n",
    "lf-in-extension": b"\x04" + b"5;a\nb\r\nhello\r\n0\r\n\r\n",
}
for name, data in chunked.items():
    write("chunked_body", name, data)
