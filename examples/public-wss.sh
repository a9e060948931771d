#!/usr/bin/env bash
# Runs examples/public-wss.toml: makes a self-signed certificate for
# localhost and 127.0.0.1 and an HMAC secret, prints a token for "alice"
# valid for an hour, and starts the gateway on 127.0.0.1:8443. Ctrl-C stops it.
# PORT moves the gateway (0 picks a free port); FRAMEGATE_BIN uses that
# binary instead of building one. Needs openssl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/lib.sh
mkdir "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null
export FRAMEGATE_EXAMPLE_SECRET="${FRAMEGATE_EXAMPLE_SECRET:-$(openssl rand -hex 32)}"
sed -e "s#127.0.0.1:8443#127.0.0.1:${PORT:-8443}#" \
    -e "s#\"../policies\"#\"$PWD/policies\"#" examples/public-wss.toml >"$work/public-wss.toml"
echo "certificate: $work/tls/cert.pem"
echo -n "token: "
python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "alice", "exp": int(time.time()) + 3600}).encode())
key = os.environ["FRAMEGATE_EXAMPLE_SECRET"].encode()
print(f"{head}.{body}." + b64(hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()))
PY
"$(framegate_bin)" --config "$work/public-wss.toml" &
pids+=($!)
wait "${pids[-1]}"
