"""Turns run.sh's results into the markdown table and the issue-5 target check.

Each results line is `target scenario key=value...`, the `result` line of
one loadgen run. A measurement repeated over rounds keeps its best value
(highest rate, lowest CPU or latency): other load on the machine only ever
makes a run worse. Usage: table.py RESULTS SECONDS_TAKEN ROUNDS COMMAND
"""

import datetime
import os
import sys

TARGETS = ["direct", "framegate", "guarded", "nginx", "haproxy"]
NAMES = {"direct": "direct", "framegate": "framegate", "guarded": "framegate, guarded",
         "nginx": "nginx", "haproxy": "HAProxy"}
SIZES = [("tp64", "64 B"), ("tp1024", "1 KiB"), ("tp16384", "16 KiB")]


# Keys where more is better; for every other key less is better.
HIGHER = {"msgs_per_s", "per_s", "msgs", "count", "conns"}


def load(path):
    results = {}
    with open(path) as f:
        for line in f:
            target, scenario, *pairs = line.split()
            best = results.setdefault((target, scenario), {})
            for k, v in (p.split("=", 1) for p in pairs):
                if k == "mode":
                    continue
                v = float(v)
                if k not in best:
                    best[k] = v
                else:
                    best[k] = max(best[k], v) if k in HIGHER else min(best[k], v)
    return results


def get(r, target, scenario, key):
    return r.get((target, scenario), {}).get(key)


def rate(v):
    if v is None:
        return "–"
    return f"{v / 1000:.0f}k" if v >= 10000 else f"{v / 1000:.1f}k"


def main():
    r = load(sys.argv[1])
    took, rounds, command = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rows = []

    def row(metric, fmt, key_of, scenario, ratio_to_direct, with_direct=True):
        cells = []
        direct = get(r, "direct", scenario, key_of)
        for t in TARGETS:
            v = get(r, t, scenario, key_of)
            if t == "direct" and not with_direct:
                cells.append("–")
            elif v is None:
                cells.append("–")
            elif t != "direct" and ratio_to_direct and direct:
                cells.append(f"{fmt(v)} ({v / direct:.2f}×)")
            else:
                cells.append(fmt(v))
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")

    for scenario, label in SIZES:
        row(f"msgs/s {label}", rate, "msgs_per_s", scenario, True)
    for scenario, label in SIZES:
        row(f"proxy CPU s per 1M msgs, {label}", lambda v: f"{v:.2f}", "cpu_s_per_1m",
            scenario, False, with_direct=False)
    row("proxy RSS per idle connection (KiB)", lambda v: f"{v:.1f}", "kib_per_conn", "idle",
        False, with_direct=False)
    row("handshakes/s", rate, "per_s", "handshakes", True)
    row("proxy CPU µs per handshake", lambda v: f"{v:.0f}", "cpu_us_each", "handshakes", False,
        with_direct=False)
    row("RTT p50 (µs)", lambda v: f"{v:.1f}", "p50_us", "latency", True)
    row("RTT p99 (µs)", lambda v: f"{v:.1f}", "p99_us", "latency", True)

    idle = get(r, "framegate", "idle", "conns")
    print()
    print(f"{datetime.date.today()}, {os.cpu_count()} cores, `{command}` "
          f"({took} s, best of {rounds} round(s); "
          f"idle: {int(idle) if idle else 'no'} connections held)")
    print()
    print("framegate `--workers 1`, default policy, access log on (stdout, sent to /dev/null);"
          " framegate, guarded: the same with `load-tests/policies/guarded.toml` (a JWT checked"
          " on every upgrade, connection limits per IP, subject and route, a handshake rate,"
          " frame and byte rates on both legs, all far above the load);"
          " nginx: the classic"
          " WebSocket proxy (`load-tests/nginx.conf`: proxy_http_version 1.1, Upgrade/Connection"
          " headers, proxy_read_timeout 3600s, `worker_processes 1`, default buffers, access log"
          " on); HAProxy: `load-tests/haproxy.cfg` (`mode http`, `nbthread 1`, `timeout tunnel"
          " 1h`, `option httplog` to stdout). Every proxy writes one access-log line per"
          " session. Proxy on core 0; backend and load generator on core 1.")
    print()
    print("| metric | " + " | ".join(NAMES[t] for t in TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    print("\n".join(rows))
    print()
    for target in ("framegate", "guarded"):
        print()
        print(f"{NAMES[target]} against the targets of issue 5:")
        for line in check(r, target):
            print(f"- {line}")


def check(r, target):
    def ratio(scenario, key):
        fg, d = get(r, target, scenario, key), get(r, "direct", scenario, key)
        return fg / d if fg is not None and d else None

    def verdict(ok):
        return "met" if ok else "MISSED"

    out = []
    for (scenario, label), want in zip(SIZES, [0.80, 0.70, 0.85]):
        x = ratio(scenario, "msgs_per_s")
        if x is not None:
            out.append(f"msgs/s {label} ≥ {want:.2f}× direct: {x:.2f}× — {verdict(x >= want)}")
    for scenario, label in SIZES:
        fg = get(r, target, scenario, "cpu_s_per_1m")
        anchors = [get(r, t, scenario, "cpu_s_per_1m") for t in ("nginx", "haproxy")]
        anchors = [a for a in anchors if a]
        if fg is not None and anchors:
            x = fg / min(anchors)
            out.append(f"CPU per message {label} ≤ 0.80× best anchor: {x:.2f}× — "
                       f"{verdict(x <= 0.80)}")
    kib = get(r, target, "idle", "kib_per_conn")
    if kib is not None:
        out.append(f"RSS per idle connection ≤ 4 KiB: {kib:.1f} KiB — {verdict(kib <= 4.0)}")
    fg, hap = get(r, target, "handshakes", "per_s"), get(r, "haproxy", "handshakes", "per_s")
    if fg is not None and hap:
        out.append(f"handshakes/s ≥ HAProxy: {fg / hap:.2f}× — {verdict(fg >= hap)}")
    for key, label in (("p50_us", "p50"), ("p99_us", "p99")):
        fg, ng = get(r, target, "latency", key), get(r, "nginx", "latency", key)
        if fg is not None and ng:
            out.append(f"RTT {label} ≤ nginx: {fg:.1f} vs {ng:.1f} µs — {verdict(fg <= ng)}")
    return out


if __name__ == "__main__":
    main()
