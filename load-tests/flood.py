#!/usr/bin/env python3
"""Half-open connection flood against framegate: what the pending-connection
caps (`max_pending_connections`, `max_pending_per_ip`) buy.

Two scenarios, each run with the caps at their defaults ("caps") and with
both set out of reach ("no caps"):

  tls  a wss listener; FLOOD (5,000) connections from 127.0.0.2 each send the
       first bytes of a TLS ClientHello and stop there.
  fd   the gateway under `prlimit --nofile=1024:1024`; FD_FLOOD (1,100) plain
       connections from 127.0.0.2 that send nothing.

For each: the gateway's RSS before and during the flood, how many flood
connections the gateway still holds, and a legitimate client's (from
127.0.0.1) full handshake time (TCP + TLS + WebSocket upgrade to the 101),
median of 20, before and during the flood, with how many of the 20 failed
(no 101 within 3 s).

Stdlib only, loopback only. Every count is bounded and the whole run stops
itself (each scenario within ~60 s); the gateway processes it starts are
killed at the end, by PID.

    cargo build --release --bin framegate
    python3 load-tests/flood.py                 # prints a markdown table
    python3 load-tests/flood.py --json out.json # also the raw numbers
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOD_FROM = "127.0.0.2"
LEGIT_FROM = "127.0.0.1"
LEGIT_TRIES = 20
LEGIT_TIMEOUT = 3.0
# The first bytes of a TLS ClientHello: a handshake record header announcing
# 512 bytes, then the handshake type. The gateway waits for the rest.
PARTIAL_CLIENT_HELLO = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
UPGRADE = (
    "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_cert(workdir):
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return cert, key


class Gateway:
    """The release binary on a config of its own, its log lines collected."""

    def __init__(self, binary, workdir, port, tls, caps, nofile=None):
        server = ['request_timeout = "60s"', 'tls_handshake_timeout = "60s"']
        if not caps:
            server += ["max_pending_connections = 1000000",
                       "max_pending_per_ip = 1000000"]
        listener = f'addr = "127.0.0.1:{port}"'
        if tls:
            listener += '\ntls = { cert = "cert.pem", key = "key.pem" }'
        config = (
            "[server]\n" + "\n".join(server) + "\n\n[[listener]]\n" + listener
            + '\n\n[[route]]\npath = "/"\nupstream = "echo"\n\n'
            '[upstream.echo]\nbuiltin = "echo"\n'
        )
        path = os.path.join(workdir, "framegate.toml")
        with open(path, "w") as f:
            f.write(config)
        cmd = [binary, "--config", path, "--workers", "2"]
        if nofile:
            cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + cmd
        env = dict(os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            text=True, cwd=workdir,
        )
        self.lines = []
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.listening.wait(20):
            self.stop()
            sys.exit("flood.py: the gateway did not start:\n" + "".join(self.lines))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening" in line:
                self.listening.set()

    def count(self, needle):
        return sum(needle in line for line in list(self.lines))

    def matching(self, *needles):
        return [re.sub(r"\x1b\[[0-9;]*m", "", l.strip()) for l in list(self.lines)
                if any(n in l for n in needles)]

    def rss(self):
        return rss_kib(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def handshake(port, tls_ctx):
    """One legitimate client from 127.0.0.1: seconds to the 101, or None."""
    started = time.perf_counter()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=LEGIT_TIMEOUT,
                                       source_address=(LEGIT_FROM, 0))
    except OSError:
        return None
    s = raw
    try:
        s.settimeout(max(0.01, LEGIT_TIMEOUT - (time.perf_counter() - started)))
        if tls_ctx is not None:
            s = tls_ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                return None
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            return None
        return time.perf_counter() - started
    except (OSError, ssl.SSLError):
        return None
    finally:
        s.close()


def legit(port, tls_ctx):
    times = [handshake(port, tls_ctx) for _ in range(LEGIT_TRIES)]
    ok = [t for t in times if t is not None]
    median = statistics.median(ok) * 1000 if ok else None
    return {"median_ms": median, "failed": LEGIT_TRIES - len(ok)}


def flood(port, n, payload, deadline):
    """Opens up to `n` connections from 127.0.0.2, sends `payload` on each
    and holds them; stops at `deadline`."""
    held = []
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.bind((FLOOD_FROM, 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            if payload:
                s.sendall(payload)
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def still_open(conns):
    """How many of `conns` the gateway has not closed."""
    n = 0
    for s in conns:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        n += 1
    return n


def scenario(binary, workdir, tls, caps, count, nofile, cert):
    port = free_port()
    gw = Gateway(binary, workdir, port, tls, caps, nofile)
    tls_ctx = None
    if tls:
        tls_ctx = ssl.create_default_context(cafile=cert)
    try:
        before_legit = legit(port, tls_ctx)
        time.sleep(0.5)
        rss_before = gw.rss()
        deadline = time.monotonic() + 30
        conns = flood(port, count, PARTIAL_CLIENT_HELLO if tls else b"", deadline)
        time.sleep(1.0)
        rss_during = gw.rss()
        held = still_open(conns)
        during_legit = legit(port, tls_ctx)
        result = {
            "scenario": "tls" if tls else "fd",
            "caps": caps,
            "flood": count,
            "opened": len(conns),
            "held_by_gateway": held,
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_during_mib": round(rss_during / 1024, 1),
            "legit_before": before_legit,
            "legit_during": during_legit,
            "accept_failed_lines": gw.count("accept failed") + gw.count("accept still failing"),
            "fd_lines": gw.matching("open-file limit", "file descriptor"),
        }
        for s in conns:
            s.close()
        return result
    finally:
        gw.stop()


def fmt_ms(r):
    if r["median_ms"] is None:
        return f"all {LEGIT_TRIES} failed"
    failed = f", {r['failed']}/{LEGIT_TRIES} failed" if r["failed"] else ""
    return f"{r['median_ms']:.2f} ms{failed}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/framegate"))
    ap.add_argument("--flood", type=int, default=5000)
    ap.add_argument("--fd-flood", type=int, default=1100)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit("flood.py: build it first: cargo build --release --bin framegate")
    for tool in ("openssl", "prlimit"):
        if shutil.which(tool) is None:
            sys.exit(f"flood.py: needs {tool}")
    args.flood = min(args.flood, 20000)
    args.fd_flood = min(args.fd_flood, 20000)
    # This process holds every flood connection.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.flood, args.fd_flood) + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit(f"flood.py: needs {want} open files, hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    results = []
    with tempfile.TemporaryDirectory(prefix="framegate-flood-") as workdir:
        os.makedirs(os.path.join(workdir, "policies"))
        open(os.path.join(workdir, "policies", "default.toml"), "w").close()
        cert, _ = make_cert(workdir)
        for caps in (False, True):
            results.append(scenario(args.binary, workdir, True, caps, args.flood, None, cert))
            results.append(scenario(args.binary, workdir, False, caps, args.fd_flood, 1024, cert))

    print("| scenario | caps | flood connections left open | RSS before -> during | "
          "legit handshake before | legit handshake during | `accept failed` log lines |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        name = (f"{r['flood']} half-open TLS from {FLOOD_FROM}" if r["scenario"] == "tls"
                else f"{r['flood']} idle TCP from {FLOOD_FROM}, nofile 1024")
        caps = "defaults (4096 / 64)" if r["caps"] else "off"
        print(f"| {name} | {caps} | {r['held_by_gateway']} of {r['opened']} | "
              f"{r['rss_before_mib']} -> {r['rss_during_mib']} MiB | "
              f"{fmt_ms(r['legit_before'])} | {fmt_ms(r['legit_during'])} | "
              f"{r['accept_failed_lines']} |")
    seen = set()
    for r in results:
        key = (r["scenario"], r["caps"])
        if r["caps"] and key not in seen:
            seen.add(key)
            print(f"\nstart-up lines ({r['scenario']} scenario):")
            for line in r["fd_lines"]:
                print("  " + line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
