#!/usr/bin/env python3
"""The client side of the load tests' HTTP workload (see load-tests/README.md).

Two modes, each bounded in connections and seconds, each printing one human
line and one `result mode=... key=value...` line for run.sh and table.py:

  wrk   Runs `wrk -t1` (keep-alive, CONNS connections, one request in flight
        on each) against URL: WARMUP seconds unmeasured, then SECS measured,
        with the utime + stime of the proxy's processes (--cpu-pid) read from
        /proc before and after the measured run. --upload N makes every
        request a POST of an N-byte body instead of a GET. Any error
        response, connect error or timeout fails the run.

  idle  Opens WARM keep-alive connections to URL, one GET each, then samples
        the summed VmRSS of --rss-pid; opens CONNS more the same way (CONCURRENCY
        at a time) and holds them all idle; after 1 s samples the RSS again:
        (after - before) / CONNS is what one more idle keep-alive client
        connection costs the proxy. The WARM connections take the one-time
        costs (the proxy's pool of backend connections, buffers) out of the
        number. Fails if the proxy closed any connection before the sample.

    httpload.py wrk  --url http://127.0.0.1:8080/100 --secs 4 --warmup 1 --cpu-pid 1234
    httpload.py wrk  --url http://127.0.0.1:8080/upload --upload 1048576 --secs 4
    httpload.py idle --url http://127.0.0.1:8080/100 --conns 2000 --rss-pid 1234

Stdlib only (and the `wrk` binary); loopback only.
"""

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

# wrk's `done` hook: one machine-readable line after the human summary.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk-result requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def pids(text):
    return [int(p) for p in text.split(",") if p] if text else []


def cpu_seconds(watch):
    """utime + stime of `watch`, in seconds."""
    ticks = 0
    for pid in watch:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # Fields after the command name (which may hold spaces): utime and
        # stime are fields 14 and 15 of the line.
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(watch):
    """Sum of VmRSS of `watch`, in KiB."""
    total = 0
    for pid in watch:
        with open(f"/proc/{pid}/status") as f:
            line = next(l for l in f if l.startswith("VmRSS:"))
        total += int(line.split()[1])
    return total


def report(human, result):
    print(human)
    print(f"result {result}", flush=True)


# === wrk ===


def run_wrk(args, script, secs):
    """One wrk run of `secs` seconds; returns its wrk-result numbers."""
    cmd = [args.wrk, "-t1", f"-c{args.conns}", f"-d{secs}s", "--timeout", f"{args.timeout}s",
           "-s", script, args.url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("wrk-result ")), None)
    if out.returncode != 0 or line is None:
        sys.exit(f"wrk failed ({out.returncode}): {out.stdout.strip()} {out.stderr.strip()}")
    r = {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
    errors = {k: r[k] for k in ("connect", "status", "timeout", "read", "write") if r[k]}
    if r["requests"] == 0 or errors:
        sys.exit(f"wrk: {r['requests']} responses, errors {errors} "
                 "(status counts responses >= 400)")
    return r


def wrk(args):
    lua = ""
    if args.upload:
        # wrk builds the request once and adds Content-Length for the body.
        lua += ('wrk.method = "POST"\n'
                f'wrk.body = string.rep("u", {args.upload})\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    lua += WRK_DONE
    watch = pids(args.cpu_pid)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        if args.warmup > 0:
            run_wrk(args, script.name, args.warmup)
        c0 = cpu_seconds(watch)
        r = run_wrk(args, script.name, args.secs)
        cpu = cpu_seconds(watch) - c0
    n, took = r["requests"], r["duration_us"] / 1e6
    per_s = n / took
    mib_up = n * args.upload / took / 2**20
    mib_down = r["bytes"] / took / 2**20
    per_1m = cpu * 1e6 / n
    path = urllib.parse.urlsplit(args.url).path
    what = f"POST {path}, {args.upload} B bodies" if args.upload else f"GET {path}"
    report(f"wrk: {args.conns} conns, {what}: {per_s:.0f} req/s ({n} in {took:.2f}s), "
           f"{mib_up if args.upload else mib_down:.1f} MiB/s {'up' if args.upload else 'down'}, "
           f"p50 {r['p50_us']} µs, p99 {r['p99_us']} µs; "
           f"watched CPU {cpu:.2f}s = {per_1m:.2f}s per 1M requests",
           f"mode=wrk conns={args.conns} upload={args.upload} requests={n} secs={took:.3f} "
           f"req_per_s={per_s:.0f} up_mib_per_s={mib_up:.1f} down_mib_per_s={mib_down:.1f} "
           f"p50_us={r['p50_us']} p99_us={r['p99_us']} cpu_s={cpu:.2f} cpu_s_per_1m={per_1m:.3f}")


# === idle ===


async def one_request(host, port, path):
    """Opens a connection and makes one GET on it; returns it, kept alive."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status, *lines = head.split("\r\n")
    if not status.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {status}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "close" in headers.get("connection", ""):
        raise RuntimeError(f"GET {path}: the response closes the connection")
    if "content-length" not in headers:
        raise RuntimeError(f"GET {path}: no Content-Length")
    await reader.readexactly(int(headers["content-length"]))
    return reader, writer


async def open_many(host, port, path, count, concurrency, deadline):
    held = []

    async def worker(n):
        for _ in range(n):
            left = deadline - time.monotonic()
            held.append(await asyncio.wait_for(one_request(host, port, path), max(left, 0.001)))

    workers = min(concurrency, count)
    await asyncio.gather(*(worker(count // workers + (w < count % workers)) for w in range(workers)))
    return held


async def idle(args):
    url = urllib.parse.urlsplit(args.url)
    host, port, path = url.hostname, url.port, url.path or "/"
    watch = pids(args.rss_pid)
    # Two thousand sockets need more than the usual soft limit of 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    deadline = time.monotonic() + args.open_timeout
    held = await open_many(host, port, path, args.warm, args.concurrency, deadline)
    await asyncio.sleep(0.5)
    before = rss_kib(watch)
    held += await open_many(host, port, path, args.conns, args.concurrency, deadline)
    # Let the proxy finish whatever it does after the last response.
    await asyncio.sleep(1)
    after = rss_kib(watch)
    closed = sum(r.at_eof() or w.is_closing() or r.exception() is not None for r, w in held)
    if closed:
        sys.exit(f"idle: the proxy closed {closed} of {len(held)} idle connections")
    per_conn = (after - before) / args.conns
    report(f"idle: {len(held)} keep-alive connections open, each after one GET {path}; "
           f"watched RSS {before} KiB -> {after} KiB: {per_conn:.2f} KiB per connection "
           f"(over the last {args.conns})",
           f"mode=http_idle conns={len(held)} measured={args.conns} rss_before_kib={before} "
           f"rss_after_kib={after} kib_per_conn={per_conn:.2f}")
    for _, w in held:
        w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = p.add_subparsers(dest="mode", required=True)
    w = modes.add_parser("wrk", help="throughput and CPU per request, through wrk")
    w.add_argument("--url", required=True, help="http://IP:PORT/PATH of the target")
    w.add_argument("--conns", type=int, default=64)
    w.add_argument("--secs", type=int, default=4, help="measured seconds (whole: wrk's unit)")
    w.add_argument("--warmup", type=int, default=1, help="unmeasured seconds first (0: none)")
    w.add_argument("--upload", type=int, default=0, help="POST bodies of this many bytes")
    w.add_argument("--cpu-pid", default="", help="comma-separated PIDs whose CPU is counted")
    w.add_argument("--timeout", type=int, default=10, help="wrk's per-request timeout, seconds")
    w.add_argument("--wrk", default="wrk", help="the wrk binary")
    i = modes.add_parser("idle", help="RSS per idle keep-alive client connection")
    i.add_argument("--url", required=True, help="http://IP:PORT/PATH to GET once per connection")
    i.add_argument("--conns", type=int, default=2000, help="connections measured")
    i.add_argument("--warm", type=int, default=100, help="connections opened before the baseline")
    i.add_argument("--concurrency", type=int, default=64, help="connections opened at once")
    i.add_argument("--rss-pid", default="", help="comma-separated PIDs whose VmRSS is summed")
    i.add_argument("--open-timeout", type=float, default=60.0)
    args = p.parse_args()
    if args.mode == "wrk":
        wrk(args)
    else:
        try:
            asyncio.run(idle(args))
        except (OSError, RuntimeError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            sys.exit(f"idle: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
