#!/usr/bin/env bash
# Runs the Autobahn TestSuite through framegate, both ways:
#   1. client leg:   wstest fuzzingclient -> framegate -> built-in echo backend
#   2. upstream leg: known-good client (examples/autobahn_client.rs) -> framegate -> wstest fuzzingserver
# Every case group but 12.* and 13.* (permessage-deflate, not offered) must pass:
# all 301 cases of autobahntestsuite 25.10.1, with 6.4.* (fail fast on bad UTF-8) strict.
# Installs autobahntestsuite (a Python 2.7 program) into target/autobahn-venv on first use.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/autobahn"
venv="${AUTOBAHN_VENV:-$repo/target/autobahn-venv}"

if [ ! -x "$venv/bin/wstest" ]; then
  py2=
  for candidate in "$HOME"/.pyenv/versions/2.7*/bin/python2.7 python2.7; do
    if "$candidate" -c 'import sys' 2>/dev/null; then py2=$candidate; break; fi
  done
  if [ -z "$py2" ]; then
    echo "autobahn: needs CPython 2.7 (python2.7 on PATH or under ~/.pyenv)" >&2
    exit 1
  fi
  echo "autobahn: installing autobahntestsuite into $venv"
  "$py2" -m pip install --quiet 'virtualenv<20.16'
  "$py2" -m virtualenv --quiet "$venv"
  "$venv/bin/pip" install --quiet autobahntestsuite==25.10.1
fi

cargo build --quiet --bin framegate --example autobahn_client
bin="$repo/target/debug"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Prints N distinct free ports (all held open until every one is chosen).
# Only for a peer that cannot bind port 0 itself (wstest): the port is free
# when printed, not when the peer binds it, so start_server retries. The
# ports are drawn from below the kernel's ephemeral range: a port bind(0)
# hands out is one the first leg's thousands of connections (and their
# TIME_WAIT entries) may take or hold by the time wstest binds it, while
# nothing takes a port below that range unless it asks for it by number.
free_ports() {
  python3 -c 'import random,socket,sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
below = range(max(1024, low - 12000), low)
socks = []
for _ in range(1000):
    if len(socks) == int(sys.argv[1]):
        break
    s = socket.socket()
    try:
        # Where no range is left below the ephemeral one, the kernel picks.
        s.bind(("127.0.0.1", random.choice(below) if len(below) >= 1000 else 0))
        socks.append(s)
    except OSError:
        s.close()
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
# Port finders, called as FINDER PID LOG: each prints the port process PID
# listens on once it does, and fails once the process has exited (or after
# 30 s); a slow start is waited for, a failed one is not.
# own_port: the one listening TCP socket the process holds, read from /proc,
# so another process on the same port is never taken for it.
own_port() {
  python3 - "$1" <<'PY'
import os, sys, time
pid = sys.argv[1]
def dead():
    try:
        with open("/proc/%s/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
for _ in range(300):
    inodes = set()
    try:
        for fd in os.listdir("/proc/%s/fd" % pid):
            try:
                link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    if len(ports) > 1:
        sys.exit("process %s listens on several ports: %s" % (pid, sorted(ports)))
    if ports:
        print(ports.pop())
        sys.exit(0)
    if dead():
        sys.exit(1)
    time.sleep(0.1)
sys.exit(1)
PY
}
# logged_port: the port in framegate's `listening addr=...` line (at info),
# since its built-in echo backend listens on a loopback port of its own.
logged_port() {
  python3 - "$1" "$2" <<'PY'
import os, re, sys, time
pid, log = sys.argv[1], sys.argv[2]
for _ in range(300):
    try:
        text = open(log, errors="replace").read()
    except OSError:
        text = ""
    m = re.search(r"\blistening\b.*\baddr=\S*:(\d+)", text)
    if m:
        print(m.group(1))
        sys.exit(0)
    try:
        with open("/proc/%s/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                sys.exit(1)
    except OSError:
        sys.exit(1)
    time.sleep(0.1)
sys.exit(1)
PY
}
# start_server NAME LOG FINDER COMMAND...: runs COMMAND in the background
# (output to LOG) and sets `port` to the port FINDER says it listens on. A
# start that lost a race for its port ("address already in use") is retried,
# at most 20 times; COMMAND is re-run each time, so a command that picks a port
# must pick a fresh one.
start_server() {
  local name=$1 log=$2 finder=$3 attempt pid
  shift 3
  for attempt in $(seq 20); do
    "$@" > "$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    if port=$("$finder" "$pid" "$log"); then return 0; fi
    kill "$pid" 2>/dev/null || true
    if ! grep -qi "address already in use\|address in use" "$log"; then break; fi
    echo "autobahn: $name lost its port to another process (attempt $attempt); retrying" >&2
  done
  echo "autobahn: $name is not listening; its log:" >&2
  cat "$log" >&2
  return 1
}
# framegate at warn, but for its `listening` line (logged_port reads it).
gateway_log='warn,framegate=info,framegate::access=warn'
mkdir -p "$work/policies" "$repo/target/autobahn-reports"
cp "$here/policy.toml" "$work/policies/conformance.toml"

# 1. Client leg. framegate binds port 0 and logs the port it got.
cat > "$work/client-leg.toml" <<TOML
[[listener]]
addr = "127.0.0.1:0"
[[route]]
path = "/"
upstream = "echo"
policy = "conformance"
[upstream.echo]
builtin = "echo"
TOML
start_server framegate "$work/gw1.log" logged_port env RUST_LOG="$gateway_log" "$bin/framegate" --config "$work/client-leg.toml"
gw=$port
cat > "$work/fuzzingclient.json" <<JSON
{"outdir": "$work/client-leg", "servers": [{"agent": "framegate", "url": "ws://127.0.0.1:$gw"}],
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
(cd "$work" && timeout 900 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json > wstest-client.log 2>&1)
cp -r "$work/client-leg" "$repo/target/autobahn-reports/"
python3 "$here/check.py" "$work/client-leg/index.json" client-leg 301

# 2. Upstream leg. wstest cannot take port 0 (it answers 400 unless the Host
# port is the one in its url), so it gets a free port and start_server retries
# with a fresh one if that port is taken before wstest binds it. `-u 0`: no
# embedded web server (it would bind 8080). wstest answers 400 unless Host is
# its own authority: preserve_host = false.
fuzzingserver() {
  local fs
  fs=$(free_ports 1)
  cat > "$work/fuzzingserver.json" <<JSON
{"url": "ws://127.0.0.1:$fs", "outdir": "$work/upstream-leg",
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
  cd "$work" && exec "$venv/bin/wstest" -m fuzzingserver -s fuzzingserver.json -u 0
}
start_server "wstest fuzzingserver" "$work/wstest-server.log" own_port fuzzingserver
fs=$port
cat > "$work/upstream-leg.toml" <<TOML
[[listener]]
addr = "127.0.0.1:0"
[[route]]
path = "/"
upstream = "fuzzingserver"
policy = "conformance"
preserve_host = false
[upstream.fuzzingserver]
servers = ["ws://127.0.0.1:$fs"]
TOML
start_server framegate "$work/gw2.log" logged_port env RUST_LOG="$gateway_log" "$bin/framegate" --config "$work/upstream-leg.toml"
gw=$port
timeout 900 "$bin/examples/autobahn_client" "ws://127.0.0.1:$gw" framegate-upstream > "$work/client.log" 2>&1
cp -r "$work/upstream-leg" "$repo/target/autobahn-reports/"
python3 "$here/check.py" "$work/upstream-leg/index.json" upstream-leg 301
