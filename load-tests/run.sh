#!/usr/bin/env bash
# framegate next to nginx and HAProxy, and next to no proxy at all (direct),
# on the same machine in the same run. Prints a markdown table of absolute
# numbers and ratios to direct. See load-tests/README.md for the method.
#
#   load-tests/run.sh            # the full comparison, best of 2 rounds (~6 minutes once built)
#   load-tests/run.sh --quick    # a smoke run: one short round, 1,000 idle connections (~3 minutes)
#
# The proxy runs alone on core 0; the echo backend and the load generator
# share core 1. Every proxy gets one worker (framegate --workers 1,
# worker_processes 1, nbthread 1) and is started afresh for each measurement.
# Ports are picked at run time; configs and logs go to a temp dir that is
# removed at the end, with every process this script started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
here="$repo/load-tests"

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
# Other processes on the machine only ever make a run slower, so each
# measurement is repeated `rounds` times (targets interleaved) and the table
# keeps the best round of each.
if [ "$quick" = 1 ]; then
  rounds=1; tp_secs=2; lat_secs=2; hs_secs=2; warmup=0.5; idle_conns=1000
else
  rounds=2; tp_secs=4; lat_secs=3; hs_secs=3; warmup=1; idle_conns=9000
fi
targets=(direct framegate guarded nginx haproxy)
started=$(date +%s)

if [ "$(nproc)" -lt 2 ]; then
  echo "run.sh: needs 2 cores (proxy on core 0, backend and load generator on core 1)" >&2
  exit 1
fi
if ! command -v nginx > /dev/null || ! command -v haproxy > /dev/null; then
  echo "run.sh: installing nginx and haproxy"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy > /dev/null
fi
nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)

(cd "$repo" && cargo build --release --quiet --bin framegate --example loadgen --example echo_backend)
bin="$repo/target/release"
loadgen=(taskset -c 1 "$bin/examples/loadgen")

work=$(mktemp -d)
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
    -e "s|@BACKEND_PORT@|$backend_port|g" "$here/$1" > "$work/$1"
}

# The echo backend, for the whole run.
taskset -c 1 "$bin/examples/echo_backend" --threads 1 > "$work/backend.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^listening' "$work/backend.out" && break
  sleep 0.05
done
backend_port=$(awk '/^listening/ { n = split($2, a, ":"); print a[n] }' "$work/backend.out")
[ -n "$backend_port" ] || { echo "run.sh: the echo backend did not start" >&2; exit 1; }

# Starts $1 on core 0; sets url, proxy (its main PID) and watch (the PIDs
# whose CPU and memory count, comma-separated).
start() {
  proxy=
  watch=
  if [ "$1" = direct ]; then
    url="ws://127.0.0.1:$backend_port/"
    return
  fi
  port=$(free_port)
  url="ws://127.0.0.1:$port/"
  case "$1" in
    framegate)
      render framegate.toml
      RUST_LOG=info taskset -c 0 "$bin/framegate" --workers 1 --config "$work/framegate.toml" \
        > /dev/null 2>> "$work/framegate.log" &
      ;;
    guarded)
      render framegate-guarded.toml
      FRAMEGATE_LOADTEST_JWT=$jwt_secret RUST_LOG=info taskset -c 0 "$bin/framegate" --workers 1 \
        --config "$work/framegate-guarded.toml" > /dev/null 2>> "$work/framegate.log" &
      ;;
    nginx)
      render nginx.conf
      taskset -c 0 "$nginx_bin" -c "$work/nginx.conf" -e "$work/nginx-error.log" -g 'daemon off;' \
        2>> "$work/nginx-error.log" &
      ;;
    haproxy)
      render haproxy.cfg
      taskset -c 0 "$haproxy_bin" -db -f "$work/haproxy.cfg" > /dev/null 2>> "$work/haproxy.log" &
      ;;
  esac
  proxy=$!
  pids+=("$proxy")
  wait_port "$port"
  # nginx's master forks its worker (maybe after it listens): count every
  # process of the proxy.
  watch=
  for _ in $(seq 40); do
    watch=$(pgrep -d, -P "$proxy" || true)
    [ "$1" != nginx ] || [ -n "$watch" ] && break
    sleep 0.05
  done
  watch="$proxy${watch:+,$watch}"
}
stop() {
  [ -n "$proxy" ] || return 0
  kill "$proxy" 2> /dev/null || true
  wait "$proxy" 2> /dev/null || true
  # Reaped: its PID may be reused, so the exit trap must not kill it again.
  local p left=()
  for p in "${pids[@]}"; do
    [ "$p" = "$proxy" ] || left+=("$p")
  done
  pids=("${left[@]}")
  # The backend sees the proxy's connections go; let it settle.
  sleep 0.3
}
# Runs one measurement of `target` (a fresh proxy) and appends
# `target scenario key=value...` to the results. In the command, @URL@ is
# the proxy's URL and `--cpu-pid @WATCH@` / `--rss-pid @WATCH@` its PIDs
# (dropped for direct, where there is no proxy).
measure() {
  local target=$1 scenario=$2
  shift 2
  start "$target"
  local cmd=() a
  for a in "$@"; do
    if [ "$a" = @WATCH@ ]; then
      if [ -n "$watch" ]; then cmd+=("$watch"); else unset 'cmd[-1]'; fi
    else
      cmd+=("${a//@URL@/$url}")
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

# Every closed session leaves TIME_WAIT sockets, and the kernel keeps at most
# tcp_max_tw_buckets of them: a handshake run that starts with the table
# empty pays for filling it, and the runs after it do not. So the table is
# filled first (direct sessions, unmeasured), and every target runs in the
# same steady state: full.
time_wait() {
  ss -s | sed -n 's/.*timewait \([0-9]*\).*/\1/p'
}
fill_time_wait() {
  local max
  max=$(cat /proc/sys/net/ipv4/tcp_max_tw_buckets 2> /dev/null || echo 0)
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

echo "load-tests: backend on :$backend_port; $(uptime)"
for round in $(seq "$rounds"); do
  # Every run leaves kernel state behind (TIME_WAIT sockets, grown slabs)
  # that makes the next one cheaper or dearer, so the order alternates:
  # with best-of-rounds, each target gets an early and a late turn.
  order=("${targets[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=()
    for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
  fi
  for size in 64 1024 16384; do
    echo "round $round: throughput, 64 connections x 16 in flight, $size B"
    for t in "${order[@]}"; do
      measure "$t" "tp$size" "${loadgen[@]}" throughput --url @URL@ "${auth[@]}" --cpu-pid @WATCH@ \
        --size "$size" --conns 64 --window 16 --secs "$tp_secs" --warmup "$warmup"
    done
  done
  echo "round $round: latency, one connection, 32 B ping-pong"
  for t in "${order[@]}"; do
    measure "$t" latency "${loadgen[@]}" latency --url @URL@ "${auth[@]}" --secs "$lat_secs" --warmup "$warmup"
  done
  echo "round $round: handshakes, 32 workers: connect + upgrade + close"
  fill_time_wait
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

took=$(($(date +%s) - started))
python3 "$here/table.py" "$results" "$took" "$rounds" "load-tests/run.sh${*:+ $*}"
