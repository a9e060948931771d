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
free_ports() {
  python3 -c 'import socket,sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
# Waits for `name` (whose log is `log`, whose PID is `pid`) to listen on `port`.
wait_port() {
  local port=$1 name=$2 log=$3 pid=$4
  for _ in $(seq 300); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "autobahn: $name is not listening on port $port; its log:" >&2
  cat "$log" >&2
  return 1
}
mkdir -p "$work/policies" "$repo/target/autobahn-reports"
cp "$here/policy.toml" "$work/policies/conformance.toml"

# 1. Client leg.
gw=$(free_ports 1)
cat > "$work/client-leg.toml" <<TOML
[[listener]]
addr = "127.0.0.1:$gw"
[[route]]
path = "/"
upstream = "echo"
policy = "conformance"
[upstream.echo]
builtin = "echo"
TOML
RUST_LOG=warn "$bin/framegate" --config "$work/client-leg.toml" > "$work/gw1.log" 2>&1 &
pids+=($!)
wait_port "$gw" framegate "$work/gw1.log" $!
cat > "$work/fuzzingclient.json" <<JSON
{"outdir": "$work/client-leg", "servers": [{"agent": "framegate", "url": "ws://127.0.0.1:$gw"}],
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
(cd "$work" && timeout 900 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json > wstest-client.log 2>&1)
cp -r "$work/client-leg" "$repo/target/autobahn-reports/"
python3 "$here/check.py" "$work/client-leg/index.json" client-leg 301

# 2. Upstream leg. wstest answers 400 unless Host is its own authority: preserve_host = false.
read -r fs gw < <(free_ports 2)
cat > "$work/upstream-leg.toml" <<TOML
[[listener]]
addr = "127.0.0.1:$gw"
[[route]]
path = "/"
upstream = "fuzzingserver"
policy = "conformance"
preserve_host = false
[upstream.fuzzingserver]
servers = ["ws://127.0.0.1:$fs"]
TOML
cat > "$work/fuzzingserver.json" <<JSON
{"url": "ws://127.0.0.1:$fs", "outdir": "$work/upstream-leg",
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
(cd "$work" && exec "$venv/bin/wstest" -m fuzzingserver -s fuzzingserver.json > wstest-server.log 2>&1) &
pids+=($!)
wait_port "$fs" "wstest fuzzingserver" "$work/wstest-server.log" $!
RUST_LOG=warn "$bin/framegate" --config "$work/upstream-leg.toml" > "$work/gw2.log" 2>&1 &
pids+=($!)
wait_port "$gw" framegate "$work/gw2.log" $!
timeout 900 "$bin/examples/autobahn_client" "ws://127.0.0.1:$gw" framegate-upstream > "$work/client.log" 2>&1
cp -r "$work/upstream-leg" "$repo/target/autobahn-reports/"
python3 "$here/check.py" "$work/upstream-leg/index.json" upstream-leg 301
