#!/usr/bin/env bash
# Runs examples/sticky.toml: three echo backends on 127.0.0.1:9001-9003 and
# the gateway on 127.0.0.1:8080 in front of them, with `balance = "client_ip"`.
# Ctrl-C stops all four.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example echo_backend --bin framegate
bin="${CARGO_TARGET_DIR:-target}/release"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
for port in 9001 9002 9003; do
  "$bin/examples/echo_backend" --listen "127.0.0.1:$port" &
  pids+=($!)
done
"$bin/framegate" --config examples/sticky.toml
