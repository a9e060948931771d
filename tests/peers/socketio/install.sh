#!/usr/bin/env bash
# Installs the Socket.IO test peers for tests/it/socketio.rs, here:
# node_modules/ from package-lock.json (npm ci) and a Python virtualenv in
# .venv/ from requirements.txt. Each step runs only when its lockfile (or
# the Python it was made with) changed since it last succeeded.
set -euo pipefail
cd "$(dirname "$0")"

stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

want=$(stamp package-lock.json)
if [ "$(cat node_modules/.installed 2>/dev/null)" != "$want" ]; then
  echo "socketio peers: npm ci"
  npm ci --no-audit --no-fund --prefer-offline --loglevel=error
  echo "$want" > node_modules/.installed
fi

want=$( (cat requirements.txt; python3 --version; command -v python3) | stamp)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$want" ]; then
  echo "socketio peers: python3 -m venv .venv; pip install -r requirements.txt"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > .venv/.installed
fi
