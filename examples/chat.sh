#!/usr/bin/env bash
# Runs examples/chat.toml: the chat backend and the gateway in front of it;
# open http://127.0.0.1:8080/ in two browser windows. Ctrl-C stops both.
# PORT (default 8080) and BACKEND_PORT (default 9000; 0 picks a free one)
# move them; FRAMEGATE_BIN uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/lib.sh
exec 3< <(exec python3 examples/chat/server.py --port "${BACKEND_PORT:-9000}")
pids+=($!)
read -r line <&3                     # "chat backend on 127.0.0.1:PORT"
echo "$line"
sed -e "s#127.0.0.1:8080#127.0.0.1:${PORT:-8080}#" \
    -e "s#ws://127.0.0.1:9000#ws://${line##* }#" \
    -e "s#\"../policies\"#\"$PWD/policies\"#" examples/chat.toml >"$work/chat.toml"
echo "open http://127.0.0.1:${PORT:-8080}/ in two browser windows"
"$(framegate_bin)" --config "$work/chat.toml" &
pids+=($!)
wait "${pids[-1]}"
