#!/usr/bin/env bash
# Runs examples/sticky.toml: three echo backends on 127.0.0.1:9001-9003 and
# the gateway on 127.0.0.1:8080 in front of them, with `balance = "client_ip"`.
# Ctrl-C stops all four. PORT moves the gateway; BACKEND_PORT=0 puts the
# backends on free ports; FRAMEGATE_BIN and ECHO_BACKEND_BIN use those
# binaries instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/lib.sh
backend="${ECHO_BACKEND_BIN:-}"
if [[ -z "$backend" ]]; then
  cargo build --quiet --release --example echo_backend
  backend="${CARGO_TARGET_DIR:-target}/release/examples/echo_backend"
fi
config=$(sed -e "s#127.0.0.1:8080#127.0.0.1:${PORT:-8080}#" \
             -e "s#\"../policies\"#\"$PWD/policies\"#" \
             -e "s#\"ws://127.0.0.1:900\([123]\)\"#\"ws://@\1@\"#g" examples/sticky.toml)
for i in 1 2 3; do
  port=$(( ${BACKEND_PORT:-9000} == 0 ? 0 : 9000 + i ))
  exec {out}< <(exec "$backend" --listen "127.0.0.1:$port")
  pids+=($!)
  read -r line <&"$out"              # "listening 127.0.0.1:PORT"
  echo "backend $i: $line"
  config=${config//@$i@/${line#listening }}
done
echo "$config" >"$work/sticky.toml"
"$(framegate_bin)" --config "$work/sticky.toml" &
pids+=($!)
wait "${pids[-1]}"
