#!/usr/bin/env bash
# framegate next to nginx and HAProxy, and next to no proxy at all (direct),
# on the same machine in the same run: a WebSocket workload, then an HTTP
# one. Prints a markdown table of absolute numbers and ratios to direct for
# each. See load-tests/README.md for the method.
#
#   load-tests/run.sh              # both workloads, best of 2 rounds (~9 minutes once built:
#                                  # ~6 WebSocket, of which pool8 ~20 s; ~2½ HTTP)
#   load-tests/run.sh --quick      # a smoke run: one short round of each (~3 minutes: ~2 WebSocket, ~1 HTTP)
#   load-tests/run.sh --ws-only    # only the WebSocket workload (also with --quick)
#   load-tests/run.sh --http-only  # only the HTTP workload (also with --quick)
#
# The proxy runs alone on core 0; the backend (echo_backend for WebSockets,
# http_backend for HTTP) and the load generator (loadgen, wrk) share core 1.
# echo_backend listens on 8 ports in its one thread: the first is the one
# server of every target, all 8 are the pool of `pool8` (framegate with an
# 8-server group and health probes; only at 64 B and in the handshakes).
# `metrics` is framegate with its admin listener on (framegate-metrics.toml),
# scraped once a second (/metrics and /status.json) from core 1 while it is
# measured; it runs in the throughput and handshake scenarios.
# Every proxy gets one worker (framegate --workers 1,
# worker_processes 1, nbthread 1) and is started afresh for each measurement.
# A target that fails a measurement (it does not start, or errs) gets n/a in
# the table and the run goes on.
# Ports are picked at run time; configs and logs go to a temp dir that is
# removed at the end, with every process this script started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here="$repo/load-tests"

quick=0
ws=1
http=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --ws-only) http=0 ;;
    --http-only) ws=0 ;;
    *) echo "usage: $0 [--quick] [--ws-only | --http-only]" >&2; exit 2 ;;
  esac
done
if [ "$ws$http" = 00 ]; then
  echo "usage: $0 [--quick] [--ws-only | --http-only]" >&2
  exit 2
fi

# Other processes on the machine only ever make a run slower, so each
# measurement is repeated `rounds` times (targets interleaved) and the table
# keeps the best round of each.
# wrk counts in whole seconds.
if [ "$quick" = 1 ]; then
  rounds=1; tp_secs=2; lat_secs=2; hs_secs=2; warmup=0.5; idle_conns=1000; http_secs=2
else
  rounds=2; tp_secs=4; lat_secs=3; hs_secs=3; warmup=1; idle_conns=9000; http_secs=4
fi
http_warmup=1
http_idle_conns=2000
targets=(direct framegate guarded nginx haproxy)
# The scenarios pool8 runs in (64 B throughput, handshakes) take it right
# after framegate, so that the two it is compared with run back to back;
# metrics likewise, in every throughput size and the handshakes.
tp_targets=(direct framegate metrics guarded nginx haproxy)
pool_targets=(direct framegate metrics pool8 guarded nginx haproxy)
pool_size=8
http_targets=(direct framegate nginx haproxy)

if [ "$(nproc)" -lt 2 ]; then
  echo "run.sh: needs 2 cores (proxy on core 0, backend and load generator on core 1)" >&2
  exit 1
fi
missing=()
for tool in nginx haproxy; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
if [ "$http" = 1 ] && ! command -v wrk > /dev/null; then missing+=(wrk); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi
nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)

(cd "$repo" && cargo build --release --quiet --bin framegate --example loadgen --example echo_backend \
  --example http_backend)
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

# Every closed session leaves TIME_WAIT sockets, at most
# net.ipv4.tcp_max_tw_buckets of them; a close while the table is full skips
# TIME_WAIT, which costs the kernel less. A loaded host that churns
# connections lives with a full table, but a run that fills and drains one
# charges whichever target comes first after it, by up to 20% per
# handshake. So the run goes into a network namespace of its own (its own
# loopback, its own TCP settings) whose table holds nothing: every close is
# the steady state's. Without the rights for that (root), the table is
# filled before each round's handshakes instead (fill_time_wait). After the
# installs and the build: the namespace has no network but its loopback.
if [ -z "${FRAMEGATE_LOADTEST_NETNS:-}" ] && unshare -n true 2> /dev/null; then
  exec unshare -n env FRAMEGATE_LOADTEST_NETNS=1 "$0" "$@"
fi
if [ -n "${FRAMEGATE_LOADTEST_NETNS:-}" ]; then
  ip link set lo up
  sysctl -qw net.ipv4.tcp_max_tw_buckets=0
  echo "load-tests: in a network namespace of their own, with no TIME_WAIT table"
fi

loadgen=(taskset -c 1 "$bin/examples/loadgen")
httpload=(taskset -c 1 python3 "$here/httpload.py")

work=$(mktemp -d)
# nginx's worker runs as another user (nobody) when started as root, and
# spools request bodies to $work/nginx-body (which its master creates for it).
chmod 711 "$work"
results="$work/results"
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2> /dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2> /dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; then return 0; fi
    sleep 0.05
  done
  echo "run.sh: nothing listening on port $1" >&2
  return 1
}
# Fills a template's @...@ placeholders into the temp dir.
render() {
  sed -e "s|@WORK@|$work|g" -e "s|@REPO@|$repo|g" -e "s|@PORT@|$port|g" \
    -e "s|@BACKEND_PORT@|$backend_port|g" -e "s|@HTTP_BACKEND_PORT@|$http_backend_port|g" \
    -e "s|@POOL_SERVERS@|$pool_servers|g" -e "s|@ADMIN_PORT@|$admin_port|g" "$here/$1" > "$work/$1"
}

# Starts example $1 (with the further arguments) on core 1 for the whole
# run and sets started_ports to its ports, as its `listening ADDR…` line
# gives them (not printed: in a $(...) subshell its PID would not reach pids).
start_backend() {
  local name=$1
  shift
  taskset -c 1 "$bin/examples/$name" --threads 1 "$@" > "$work/$name.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -qs '^listening' "$work/$name.out" && break
    sleep 0.05
  done
  read -ra started_ports <<< "$(awk '/^listening/ {
    for (i = 2; i <= NF; i++) { n = split($i, a, ":"); printf "%s ", a[n] } }' "$work/$name.out")"
  [ "${#started_ports[@]}" -gt 0 ] || { echo "run.sh: $name did not start" >&2; exit 1; }
}
backend_port=
http_backend_port=
admin_port=
scraper=
pool_servers=
if [ "$ws" = 1 ]; then
  start_backend echo_backend --ports "$pool_size"
  backend_port=${started_ports[0]}
  for p in "${started_ports[@]}"; do
    pool_servers+="${pool_servers:+, }\"ws://127.0.0.1:$p\""
  done
fi
if [ "$http" = 1 ]; then
  start_backend http_backend
  http_backend_port=${started_ports[0]}
fi

# Which workload `start` sets a proxy up for: ws or http (its own configs
# and backend).
workload=ws

# Starts $1 on core 0 for the current workload; sets addr (IP:PORT to
# connect to), url (ws://addr/), proxy (its main PID) and watch (the PIDs
# whose CPU and memory count, comma-separated). Fails if it does not listen.
start() {
  proxy=
  scraper=
  watch=
  local suffix=
  [ "$workload" = ws ] || suffix=-http
  if [ "$1" = direct ]; then
    if [ "$workload" = ws ]; then addr=127.0.0.1:$backend_port; else addr=127.0.0.1:$http_backend_port; fi
    url="ws://$addr/"
    return
  fi
  port=$(free_port)
  addr=127.0.0.1:$port
  url="ws://$addr/"
  case "$1" in
    framegate | guarded | pool8 | metrics)
      local config
      case "$1" in
        framegate) config=framegate$suffix.toml ;;
        guarded) config=framegate-guarded.toml ;;
        pool8) config=framegate-pool.toml ;;
        metrics) config=framegate-metrics.toml; admin_port=$(free_port) ;;
      esac
      render "$config"
      # Only guarded's policy reads the JWT secret.
      FRAMEGATE_LOADTEST_JWT=$jwt_secret RUST_LOG=info taskset -c 0 "$bin/framegate" --workers 1 \
        --config "$work/$config" > /dev/null 2>> "$work/framegate.log" &
      ;;
    nginx)
      render "nginx$suffix.conf"
      taskset -c 0 "$nginx_bin" -c "$work/nginx$suffix.conf" -e "$work/nginx-error.log" \
        -g 'daemon off;' 2>> "$work/nginx-error.log" &
      ;;
    haproxy)
      render "haproxy$suffix.cfg"
      taskset -c 0 "$haproxy_bin" -db -f "$work/haproxy$suffix.cfg" > /dev/null \
        2>> "$work/haproxy.log" &
      ;;
  esac
  proxy=$!
  pids+=("$proxy")
  wait_port "$port" || return 1
  # nginx's master forks its worker (maybe after it listens): count every
  # process of the proxy.
  watch=
  for _ in $(seq 40); do
    watch=$(pgrep -d, -P "$proxy" || true)
    [ "$1" != nginx ] || [ -n "$watch" ] && break
    sleep 0.05
  done
  watch="$proxy${watch:+,$watch}"
  if [ "$1" = metrics ]; then
    wait_port "$admin_port" || return 1
    scrape "$admin_port" &
    scraper=$!
    pids+=("$scraper")
  fi
}
# What a Prometheus server and an open status page do: GET /metrics and
# /status.json once a second, each over a new connection, on core 1 (with
# the load generator) so that only the serving is on the proxy's core.
scrape() {
  exec taskset -c 1 bash -c '
    while sleep 1; do
      for path in /metrics /status.json; do
        exec 3<> "/dev/tcp/127.0.0.1/$1" || exit 0
        printf "GET %s HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n" "$path" >&3
        cat <&3 > /dev/null
        exec 3<&-
      done
    done' scrape "$1"
}
stop() {
  [ -n "$proxy" ] || return 0
  local p left=()
  for p in $scraper $proxy; do
    kill "$p" 2> /dev/null || true
    wait "$p" 2> /dev/null || true
  done
  # Reaped: their PIDs may be reused, so the exit trap must not kill them again.
  for p in "${pids[@]}"; do
    [ "$p" = "$proxy" ] || [ "$p" = "$scraper" ] || left+=("$p")
  done
  pids=("${left[@]}")
  # The backend sees the proxy's connections go; let it settle.
  sleep 0.3
}
# Runs one measurement of `target` (a fresh proxy) and appends
# `target scenario key=value...` to the results. In the command, @URL@ is
# the proxy's ws:// URL, @ADDR@ its IP:PORT, and `--cpu-pid @WATCH@` /
# `--rss-pid @WATCH@` its PIDs (dropped for direct, where there is no proxy).
# A target that does not start or whose command fails is reported and left
# out of the results (n/a in the table).
measure() {
  local target=$1 scenario=$2
  shift 2
  if ! start "$target"; then
    echo "  $target $scenario FAILED: it did not start (see its log)"
    stop
    return 0
  fi
  local cmd=() a
  for a in "$@"; do
    if [ "$a" = @WATCH@ ]; then
      if [ -n "$watch" ]; then cmd+=("$watch"); else unset 'cmd[-1]'; fi
    else
      a=${a//@URL@/$url}
      cmd+=("${a//@ADDR@/$addr}")
    fi
  done
  local out
  # Every mode bounds itself; the timeout is a second bound in case one hangs.
  if out=$(timeout 300 "${cmd[@]}" 2>&1); then
    echo "$out" | grep -v '^result' | sed "s/^/  $target: /"
    echo "$target $scenario $(echo "$out" | sed -n 's/^result //p')" >> "$results"
  else
    echo "  $target $scenario FAILED: $out" | tail -3
  fi
  stop
}

# Outside a namespace of its own (see the top), the TIME_WAIT table is
# filled first (direct sessions, unmeasured), so that every target starts
# from the same state: nearly full.
time_wait() {
  ss -s | sed -n 's/.*timewait \([0-9]*\).*/\1/p'
}
fill_time_wait() {
  local max
  max=$(cat /proc/sys/net/ipv4/tcp_max_tw_buckets 2> /dev/null || echo 0)
  [ "$max" = 0 ] && return 0
  for _ in $(seq 10); do
    [ "$(time_wait)" -ge $((max * 9 / 10)) ] && return 0
    "${loadgen[@]}" handshakes --url "ws://127.0.0.1:$backend_port/" --workers 32 --sources 8 \
      --secs 2 --warmup 0 > /dev/null 2>&1 || true
  done
}

# Every target gets the same upgrade request, bearer token included: only
# `guarded` (framegate with policies/guarded.toml) checks it.
jwt_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
token=$(FRAMEGATE_LOADTEST_JWT=$jwt_secret python3 - << 'EOF'
import base64, hashlib, hmac, json, os, time
def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "loadtest", "exp": int(time.time()) + 86400}).encode())
key = os.environ["FRAMEGATE_LOADTEST_JWT"].encode()
sig = b64(hmac.new(key, f"{head}.{claims}".encode(), hashlib.sha256).digest())
print(f"{head}.{claims}.{sig}")
EOF
)
auth=(--header "Authorization: Bearer $token")

# Every run leaves kernel state behind (TIME_WAIT sockets, grown slabs)
# that makes the next one cheaper or dearer, so the order alternates: with
# best-of-rounds, each target gets an early and a late turn. Sets `order` to
# the arguments, reversed in even rounds.
round_order() {
  order=("$@")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = $# ; i >= 1; i--)); do order+=("${!i}"); done
  fi
}

ws_part() {
  workload=ws
  local started
  started=$(date +%s)
  for round in $(seq "$rounds"); do
    for size in 64 1024 16384; do
      if [ "$size" = 64 ]; then round_order "${pool_targets[@]}"; else round_order "${tp_targets[@]}"; fi
      echo "round $round: throughput, 64 connections x 16 in flight, $size B"
      for t in "${order[@]}"; do
        measure "$t" "tp$size" "${loadgen[@]}" throughput --url @URL@ "${auth[@]}" --cpu-pid @WATCH@ \
          --size "$size" --conns 64 --window 16 --secs "$tp_secs" --warmup "$warmup"
      done
    done
    echo "round $round: latency, one connection, 32 B ping-pong"
    round_order "${targets[@]}"
    for t in "${order[@]}"; do
      measure "$t" latency "${loadgen[@]}" latency --url @URL@ "${auth[@]}" --secs "$lat_secs" --warmup "$warmup"
    done
    echo "round $round: handshakes, 32 workers: connect + upgrade + close"
    fill_time_wait
    round_order "${pool_targets[@]}"
    for t in "${order[@]}"; do
      measure "$t" handshakes "${loadgen[@]}" handshakes --url @URL@ "${auth[@]}" --cpu-pid @WATCH@ \
        --workers 32 --sources 8 --secs "$hs_secs" --warmup "$warmup"
    done
  done
  echo "idle, $idle_conns connections held from 8 source addresses"
  for t in "${targets[@]:1}"; do
    measure "$t" idle "${loadgen[@]}" idle --url @URL@ "${auth[@]}" --conns "$idle_conns" --sources 8 \
      --rss-pid @WATCH@
  done
  echo "_took ws secs=$(($(date +%s) - started))" >> "$results"
}

# The HTTP workload: wrk keeps 64 keep-alive connections busy, one request
# in flight on each; every proxy keeps a pool of keep-alive connections to
# the backend.
http_part() {
  workload=http
  local started
  started=$(date +%s)
  local wrk_args=(--conns 64 --secs "$http_secs" --warmup "$http_warmup" --cpu-pid @WATCH@)
  for round in $(seq "$rounds"); do
    round_order "${http_targets[@]}"
    for path in 100 16k; do
      echo "round $round: HTTP, 64 keep-alive connections, GET /$path"
      for t in "${order[@]}"; do
        measure "$t" "http$path" "${httpload[@]}" wrk --url "http://@ADDR@/$path" "${wrk_args[@]}"
      done
    done
    echo "round $round: HTTP, 64 keep-alive connections, POST /upload of 1 MiB"
    for t in "${order[@]}"; do
      measure "$t" upload "${httpload[@]}" wrk --url "http://@ADDR@/upload" --upload 1048576 \
        "${wrk_args[@]}"
    done
  done
  echo "HTTP idle, $http_idle_conns keep-alive connections held after one GET each"
  for t in "${http_targets[@]:1}"; do
    measure "$t" http_idle "${httpload[@]}" idle --url "http://@ADDR@/100" --conns "$http_idle_conns" \
      --rss-pid @WATCH@
  done
  echo "_took http secs=$(($(date +%s) - started))" >> "$results"
}

echo "load-tests: backends on :${backend_port:--} (ws), :${http_backend_port:--} (http); $(uptime)"
touch "$results"
if [ "$ws" = 1 ]; then ws_part; fi
if [ "$http" = 1 ]; then http_part; fi
python3 "$here/table.py" "$results" "$rounds" "load-tests/run.sh${*:+ $*}"
