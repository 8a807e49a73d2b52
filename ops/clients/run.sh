#!/usr/bin/env bash
# Third-party clients against `dashtam sandbox`, as new users would point
# them: Plaid's official Python client (plaid-python) and schwab-py. Every
# response must parse in the clients' own models; the app secret has `+`,
# `/` and `=` in it and Schwab access tokens outlive no call, so HTTP Basic
# and refreshes are exercised.
#
# Usage: ops/clients/run.sh [path/to/dashtam]
# Needs plaid-python and schwab-py installed for python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/dashtam}
PORT=${CLIENTS_SANDBOX_PORT:-18482}
SECRET='dashtam+sandbox/secret=='
LOG=$(mktemp)
DASHTAM__SANDBOX__SECRET=$SECRET DASHTAM__SANDBOX__OAUTH__ACCESS_TTL_SECS=200 \
    "$BIN" sandbox --listen 127.0.0.1:$PORT >"$LOG" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 60); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$LOG"; echo "the sandbox did not start"; exit 1; }
python3 ops/clients/plaid_official_client.py "http://127.0.0.1:$PORT" dashtam-sandbox-client "$SECRET"
python3 -W ignore ops/clients/schwab_py_client.py "http://127.0.0.1:$PORT" dashtam-sandbox-client "$SECRET"
