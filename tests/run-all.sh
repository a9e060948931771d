#!/usr/bin/env bash
# The whole test suite: formatting, the module-cycle check, lints, unit and
# integration tests (real gateway, real sockets), the Autobahn TestSuite on
# both legs, then every fuzz target for a bounded time (tests/fuzz.sh;
# nightly toolchain).
# Installs the test peers it needs on first use: Autobahn (in a Python 2.7
# virtualenv), Debian's Chromium for the browser tests, systemd (for
# `systemd-analyze verify` of dist/framegate.service), and the Socket.IO
# peers (npm ci and a Python virtualenv in tests/peers/socketio/).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
python3 tests/tools/module_cycles.py
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
if ! command -v chromium >/dev/null; then
  echo "run-all: installing chromium for tests/it/browser.rs"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if ! command -v systemd-analyze >/dev/null; then
  echo "run-all: installing systemd for tests/it/cli.rs (systemd-analyze verify)"
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi
if ! command -v npm >/dev/null; then
  echo "run-all: installing Node.js for tests/it/socketio.rs"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
bash tests/peers/socketio/install.sh
cargo test --test it -- --ignored browser:: socketio::
bash tests/autobahn/run.sh
bash tests/fuzz.sh
