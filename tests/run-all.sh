#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests
# (real gateway, real sockets), then the Autobahn TestSuite on both legs.
# Installs the test peers it needs (Autobahn in a Python 2.7 virtualenv,
# the Python `websockets` package) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
bash tests/autobahn/run.sh
