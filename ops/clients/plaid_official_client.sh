#!/usr/bin/env bash
# Plaid's official Python client (plaid-python, PyPI) against `dashtam
# sandbox`: every response must parse in the client's own models.
#
# Usage: ops/clients/plaid_official_client.sh [path/to/dashtam]
# Needs plaid-python installed for python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/dashtam}
PORT=${PLAID_CLIENT_SANDBOX_PORT:-18482}
LOG=$(mktemp)
"$BIN" sandbox --listen 127.0.0.1:$PORT >"$LOG" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 60); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$LOG"; echo "the sandbox did not start"; exit 1; }
python3 ops/clients/plaid_official_client.py "http://127.0.0.1:$PORT"
