"""Turns run.sh's results into markdown tables and the target checks: one
for the WebSocket workload (issue 5's targets) and one for the HTTP workload,
each printed when the run made it.

Each results line is `target scenario key=value...`, the `result` line of
one loadgen or httpload.py run; `_took WORKLOAD secs=N` lines give each
workload's duration. A measurement repeated over rounds keeps its best value
(highest rate, lowest CPU or latency): other load on the machine only ever
makes a run worse. A key that describes a round (FROM_ROUND_OF) comes from
the round that gave the best value of the key it goes with. A target with no result where it should have one (it
failed) shows n/a; – is a cell that does not apply (no proxy CPU for direct,
a scenario the target is not run in).
Usage: table.py RESULTS ROUNDS COMMAND
"""

import datetime
import os
import sys

TARGETS = ["direct", "framegate", "metrics", "pool8", "guarded", "nginx", "haproxy"]
HTTP_TARGETS = ["direct", "framegate", "nginx", "haproxy"]
NAMES = {"direct": "direct", "framegate": "framegate", "pool8": "framegate, 8-server pool",
         "guarded": "framegate, guarded", "metrics": "framegate, metrics on",
         "nginx": "nginx", "haproxy": "HAProxy"}
# The scenarios of a target that run.sh does not run in all of them.
ONLY = {"pool8": {"tp64", "handshakes"},
        "metrics": {"tp64", "tp1024", "tp16384", "handshakes"}}
SIZES = [("tp64", "64 B"), ("tp1024", "1 KiB"), ("tp16384", "16 KiB")]
HTTP_SIZES = [("http100", "100 B"), ("http16k", "16 KiB")]


# Keys where more is better; for every other key less is better.
HIGHER = {"msgs_per_s", "per_s", "msgs", "count", "conns", "req_per_s", "up_mib_per_s",
          "down_mib_per_s", "requests"}
# Keys that describe a round rather than rank it: each is kept from the
# round whose value of the key it is paired with was best (the sleeps that
# went with the handshake rate shown, not the fewest of any round; the
# upgrade times of that round, which its rate sets).
FROM_ROUND_OF = {"sleeps_each": "per_s", "upgrade_p50_us": "per_s", "upgrade_p99_us": "per_s"}


def load(path):
    """The best value of every (target, scenario) key, and every round's."""
    results, rounds = {}, {}
    with open(path) as f:
        for line in f:
            target, scenario, *pairs = line.split()
            best = results.setdefault((target, scenario), {})
            every = rounds.setdefault((target, scenario), {})
            for k, v in (p.split("=", 1) for p in pairs):
                if k == "mode":
                    continue
                v = float(v)
                every.setdefault(k, []).append(v)
                if k not in best:
                    best[k] = v
                else:
                    best[k] = max(best[k], v) if k in HIGHER else min(best[k], v)
    for key, every in rounds.items():
        for k, by in FROM_ROUND_OF.items():
            if k in every and by in every:
                ranking = every[by]
                results[key][k] = every[k][ranking.index(max(ranking))]
    return results, rounds


def get(r, target, scenario, key):
    return r.get((target, scenario), {}).get(key)


def rate(v):
    return f"{v / 1000:.0f}k" if v >= 10000 else f"{v / 1000:.1f}k"


class Table:
    """The rows of one markdown table over `targets`."""

    def __init__(self, r, targets):
        self.r, self.targets, self.rows = r, targets, []

    def row(self, metric, fmt, key_of, scenario, ratio_to_direct, with_direct=True):
        r, cells = self.r, []
        direct = get(r, "direct", scenario, key_of)
        for t in self.targets:
            v = get(r, t, scenario, key_of)
            if t == "direct" and not with_direct or scenario not in ONLY.get(t, {scenario}):
                cells.append("–")
            elif v is None:
                cells.append("n/a")
            elif t != "direct" and ratio_to_direct and direct:
                cells.append(f"{fmt(v)} ({v / direct:.2f}×)")
            else:
                cells.append(fmt(v))
        self.rows.append(f"| {metric} | " + " | ".join(cells) + " |")

    def print(self):
        print("| metric | " + " | ".join(NAMES[t] for t in self.targets) + " |")
        print("|---|" + "---|" * len(self.targets))
        print("\n".join(self.rows))


def main():
    r, every = load(sys.argv[1])
    rounds, command = int(sys.argv[2]), sys.argv[3]
    took = {scenario: int(v["secs"]) for (t, scenario), v in r.items() if t == "_took"}
    if "ws" in took:
        ws_table(r, every, took["ws"], rounds, command)
    if "http" in took:
        http_table(r, took["http"], rounds, command)


def ws_table(r, every, took, rounds, command):
    table = Table(r, TARGETS)
    row = table.row
    for scenario, label in SIZES:
        row(f"msgs/s {label}", rate, "msgs_per_s", scenario, True)
    for scenario, label in SIZES:
        row(f"proxy CPU s per 1M msgs, {label}", lambda v: f"{v:.2f}", "cpu_s_per_1m",
            scenario, False, with_direct=False)
    row("proxy RSS per idle connection (KiB)", lambda v: f"{v:.1f}", "kib_per_conn", "idle",
        False, with_direct=False)
    # Proxies run within a few percent of each other here: one more digit.
    row("handshakes/s", lambda v: f"{v / 1000:.1f}k", "per_s", "handshakes", True)
    row("proxy CPU µs per handshake", lambda v: f"{v:.1f}", "cpu_us_each", "handshakes", False,
        with_direct=False)
    row("proxy sleeps per handshake", lambda v: f"{v:.2f}", "sleeps_each", "handshakes", False,
        with_direct=False)
    row("connect to 101 p50 (µs), 32 at a time", lambda v: f"{v:.0f}", "upgrade_p50_us",
        "handshakes", True)
    row("connect to 101 p99 (µs), 32 at a time", lambda v: f"{v:.0f}", "upgrade_p99_us",
        "handshakes", True)
    row("RTT p50 (µs)", lambda v: f"{v:.1f}", "p50_us", "latency", True)
    row("RTT p99 (µs)", lambda v: f"{v:.1f}", "p99_us", "latency", True)

    idle = get(r, "framegate", "idle", "conns")
    print()
    print("## WebSocket workload")
    print()
    print(f"{datetime.date.today()}, {os.cpu_count()} cores, `{command}` "
          f"(this part {took} s, best of {rounds} round(s); "
          f"idle: {int(idle) if idle else 'no'} connections held)")
    print()
    print("framegate `--workers 1`, default policy, access log on (stdout, sent to /dev/null);"
          " framegate, guarded: the same with `load-tests/policies/guarded.toml` (a JWT checked"
          " on every upgrade, connection limits per IP, subject and route, a handshake rate,"
          " frame and byte rates on both legs, all far above the load);"
          " framegate, 8-server pool: the same as framegate with one group of 8 servers"
          " (`load-tests/framegate-pool.toml`: round robin, passive ejection, a WebSocket probe"
          " of every server each second, counted in its CPU), the 8 being the one echo backend"
          " listening on 8 ports, run at 64 B and in the handshakes only;"
          " framegate, metrics on: the same as framegate with `[admin]` on"
          " (`load-tests/framegate-metrics.toml`), `/metrics` and `/status.json` scraped once a"
          " second each during the run (metrics are collected in every column; this one adds"
          " serving them), run in the throughput and handshake scenarios only;"
          " nginx: the classic"
          " WebSocket proxy (`load-tests/nginx.conf`: proxy_http_version 1.1, Upgrade/Connection"
          " headers, proxy_read_timeout 3600s, `worker_processes 1`, default buffers, access log"
          " on); HAProxy: `load-tests/haproxy.cfg` (`mode http`, `nbthread 1`, `timeout tunnel"
          " 1h`, `option httplog` to stdout). Every proxy writes one access-log line per"
          " session. Proxy on core 0; backend and load generator on core 1.")
    print()
    table.print()
    print()
    for target in ("framegate", "guarded"):
        print()
        print(f"{NAMES[target]} against the targets of issue 5:")
        for line in check(r, target):
            print(f"- {line}")
    lines = same_run_check(r, every, "pool8", POOL_KEYS)
    if lines:
        print()
        print("framegate, 8-server pool against framegate (one server), same run: handshakes/s"
              " should stay within noise of it")
        for line in lines:
            print(f"- {line}")
    lines = same_run_check(r, every, "metrics", METRICS_KEYS, budget=0.02)
    if lines:
        print()
        print("framegate, metrics on against framegate, same run: the cost of serving and"
              " scraping the metrics should be ≤ 2% of msgs/s and handshakes/s")
        for line in lines:
            print(f"- {line}")


POOL_KEYS = (
    ("handshakes", "per_s", "handshakes/s", lambda v: f"{v:,.0f}"),
    ("handshakes", "cpu_us_each", "proxy CPU µs per handshake", lambda v: f"{v:.1f}"),
    ("tp64", "msgs_per_s", "msgs/s 64 B", rate),
    ("tp64", "cpu_s_per_1m", "proxy CPU s per 1M msgs, 64 B", lambda v: f"{v:.2f}"))
METRICS_KEYS = (
    ("handshakes", "per_s", "handshakes/s", lambda v: f"{v:,.0f}"),
    ("handshakes", "cpu_us_each", "proxy CPU µs per handshake", lambda v: f"{v:.1f}"),
    ("tp64", "cpu_s_per_1m", "proxy CPU s per 1M msgs, 64 B", lambda v: f"{v:.3f}"),
    ("tp64", "msgs_per_s", "msgs/s 64 B", rate),
    ("tp1024", "msgs_per_s", "msgs/s 1 KiB", rate),
    ("tp16384", "msgs_per_s", "msgs/s 16 KiB", rate))


def same_run_check(r, every, target, keys, budget=None):
    """`target` over framegate for `keys`, with framegate's own spread
    between rounds as the measure of noise; with a `budget`, whether a rate
    (a HIGHER key) lost no more than it, or a cost (CPU) grew no more."""
    out = []
    for scenario, key, label, fmt in keys:
        other, one = get(r, target, scenario, key), get(r, "framegate", scenario, key)
        if other is None or not one:
            continue
        # A 2% budget needs a third digit to be read.
        digits = 3 if budget is not None else 2
        line = f"{label}: {other / one:.{digits}f}× ({fmt(other)} vs {fmt(one)})"
        if budget is not None and key in HIGHER:
            ok = other >= one * (1 - budget)
            line += f" — {'met' if ok else 'MISSED'} (≥ {1 - budget:.2f}×)"
        elif budget is not None:
            ok = other <= one * (1 + budget)
            line += f" — {'met' if ok else 'MISSED'} (≤ {1 + budget:.2f}×)"
        own = every.get(("framegate", scenario), {}).get(key, [])
        if len(own) > 1:
            line += (f"; framegate's own {len(own)} rounds differ by "
                     f"{(max(own) / min(own) - 1) * 100:.0f}%")
        out.append(line)
    return out


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
        line = f"handshakes/s ≥ HAProxy: {fg / hap:.2f}× — {verdict(fg >= hap)}"
        # What sets the rate where the load generator's core is the
        # bottleneck (load-tests/README.md): how often each proxy slept.
        fs, hs = (get(r, t, "handshakes", "sleeps_each") for t in (target, "haproxy"))
        if fs is not None and hs is not None:
            line += f" (proxy sleeps per handshake {fs:.2f} vs HAProxy's {hs:.2f})"
        out.append(line)
    # The other handshake figure: the tail of the upgrade time,
    # against direct's, for framegate and for HAProxy.
    direct = get(r, "direct", "handshakes", "upgrade_p99_us")
    fg, hap = (get(r, t, "handshakes", "upgrade_p99_us") for t in (target, "haproxy"))
    if direct and fg is not None and hap is not None:
        out.append(f"connect to 101 p99 ≤ HAProxy's: {fg / direct:.2f}× direct vs HAProxy's "
                   f"{hap / direct:.2f}× — {verdict(fg <= hap)}")
    for key, label in (("p50_us", "p50"), ("p99_us", "p99")):
        fg, ng = get(r, target, "latency", key), get(r, "nginx", "latency", key)
        if fg is not None and ng:
            out.append(f"RTT {label} ≤ nginx: {fg:.1f} vs {ng:.1f} µs — {verdict(fg <= ng)}")
    return out


def http_table(r, took, rounds, command):
    table = Table(r, HTTP_TARGETS)
    row = table.row
    for scenario, label in HTTP_SIZES:
        row(f"req/s {label}", rate, "req_per_s", scenario, True)
    for scenario, label in HTTP_SIZES:
        row(f"proxy CPU s per 1M requests, {label}", lambda v: f"{v:.2f}", "cpu_s_per_1m",
            scenario, False, with_direct=False)
    row("1 MiB uploads: MiB/s", lambda v: f"{v:.0f}", "up_mib_per_s", "upload", True)
    row("proxy CPU ms per 1 MiB upload", lambda v: f"{v / 1000:.2f}", "cpu_s_per_1m", "upload",
        False, with_direct=False)
    idle = next((r[(t, "http_idle")] for t in HTTP_TARGETS if (t, "http_idle") in r), {})
    row("proxy RSS per idle keep-alive client connection (KiB)", lambda v: f"{v:.1f}",
        "kib_per_conn", "http_idle", False, with_direct=False)
    print()
    print("## HTTP workload")
    print()
    print(f"{datetime.date.today()}, {os.cpu_count()} cores, `{command}` "
          f"(this part {took} s, best of {rounds} round(s); "
          f"idle: {int(idle.get('measured', 0)):,} connections measured, "
          f"{int(idle.get('conns', 0)):,} held)")
    print()
    print("wrk -t1, 64 keep-alive connections, one request in flight on each; bodies of 100 B"
          " and 16 KiB (`GET`), uploads of 1 MiB (`POST`, Content-Length). framegate"
          " `--workers 1`, default policy, access log on (stdout, sent to /dev/null),"
          " `load-tests/framegate-http.toml`; nginx: `load-tests/nginx-http.conf`"
          " (proxy_http_version 1.1, `Connection \"\"`, an upstream `keepalive 64` pool,"
          " `worker_processes 1`, default buffers, so request bodies are spooled to disk,"
          " access log on); HAProxy: `load-tests/haproxy-http.cfg` (`mode http`,"
          " `http-reuse always`, `nbthread 1`, `option httplog` to stdout). Every proxy writes"
          " one access-log line per request. Proxy on core 0; backend and wrk on core 1.")
    print()
    table.print()
    print()
    print()
    print("framegate against the HTTP targets:")
    for line in http_check(r, "framegate"):
        print(f"- {line}")


def http_check(r, target):
    def verdict(ok):
        return "met" if ok else "MISSED"

    out = []
    for scenario, label in HTTP_SIZES:
        fg, ng = get(r, target, scenario, "req_per_s"), get(r, "nginx", scenario, "req_per_s")
        if fg is not None and ng:
            out.append(f"req/s {label} ≥ nginx: {fg / ng:.2f}× — {verdict(fg >= ng)}")
    for scenario, label in HTTP_SIZES:
        fg, ng = get(r, target, scenario, "cpu_s_per_1m"), get(r, "nginx", scenario, "cpu_s_per_1m")
        if fg is not None and ng:
            out.append(f"CPU per request {label} ≤ nginx: {fg:.2f} vs {ng:.2f} s per 1M — "
                       f"{verdict(fg <= ng)}")
    fg, hap = get(r, target, "upload", "up_mib_per_s"), get(r, "haproxy", "upload", "up_mib_per_s")
    if fg is not None and hap:
        out.append(f"1 MiB uploads ≥ HAProxy's rate: {fg / hap:.2f}× — {verdict(fg >= hap)}")
    kib = get(r, target, "http_idle", "kib_per_conn")
    if kib is not None:
        out.append(f"RSS per idle keep-alive client connection ≤ 4 KiB: {kib:.1f} KiB — "
                   f"{verdict(kib <= 4.0)}")
    if not out:
        out.append("no results (every framegate measurement failed)")
    return out


if __name__ == "__main__":
    main()
