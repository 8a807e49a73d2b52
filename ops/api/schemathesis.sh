#!/usr/bin/env bash
# Property-based API tests: schemathesis against a live daemon and sandbox
# provider, from the OpenAPI description the daemon serves. Fails on any
# 5xx, any response that breaks the description (status, content type,
# headers, schema), and any accepted request the description says is bad.
#
# Usage: ops/api/schemathesis.sh [path/to/dashtam] [seconds per role]
# Needs PostgreSQL on 127.0.0.1:5432 (creates and drops dashtam_schemathesis)
# and schemathesis (PyPI) installed for python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${1:-target/debug/dashtam}
MAX_TIME=${2:-60}
DB=dashtam_schemathesis
ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
API_PORT=${SCHEMATHESIS_API_PORT:-18480}
SANDBOX_PORT=${SCHEMATHESIS_SANDBOX_PORT:-18481}
WORK=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export DASHTAM__AUTH__JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
export DASHTAM__CRYPTO__ACTIVE_KEY=k1
export DASHTAM__CRYPTO__KEYS__K1=$("$BIN" keys generate)
export DASHTAM__PROVIDERS__PLAID__BASE_URL=http://127.0.0.1:$SANDBOX_PORT
export DASHTAM__PROVIDERS__SCHWAB__BASE_URL=http://127.0.0.1:$SANDBOX_PORT
export DASHTAM__RATE_LIMIT__ENABLED=false
export DASHTAM__LOG__FORMAT=json
export RUST_LOG=warn

"$BIN" sandbox --listen 127.0.0.1:$SANDBOX_PORT >"$WORK/sandbox.log" 2>&1 &
pids+=($!)
"$BIN" serve --migrate --listen 127.0.0.1:$API_PORT >"$WORK/daemon.log" 2>&1 &
pids+=($!)
API=http://127.0.0.1:$API_PORT
for _ in $(seq 1 60); do
    curl -fs "$API/readyz" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$SANDBOX_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fs "$API/readyz" >/dev/null || { cat "$WORK/daemon.log"; echo "the daemon did not become ready"; exit 1; }

# Real data to find: one linked and synced connection.
CLIENT=$("$BIN" token issue --sub alice --role client --ttl 1h)
OPERATOR=$("$BIN" token issue --sub ops --role operator --ttl 1h)
PUBLIC=$(curl -fs -X POST "http://127.0.0.1:$SANDBOX_PORT/sandbox/public_token/create" \
    -H 'content-type: application/json' \
    -d '{"client_id":"dashtam-sandbox-client","secret":"dashtam-sandbox-secret","institution_id":"ins_1","initial_products":["transactions"],"options":{"accounts":2,"transactions_per_account":20}}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["public_token"])')
CONN=$(curl -fs -X POST "$API/api/v1/connections" -H "authorization: Bearer $CLIENT" \
    -H 'content-type: application/json' -d "{\"provider\":\"plaid\",\"public_token\":\"$PUBLIC\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -fs -X POST "$API/api/v1/connections/$CONN/syncs" -H "authorization: Bearer $CLIENT" >/dev/null

status=0
for role in client operator; do
    token=$CLIENT; [ "$role" = operator ] && token=$OPERATOR
    echo "schemathesis as $role (${MAX_TIME}s)"
    python3 -m schemathesis.cli --config-file ops/api/schemathesis.toml run "$API/api/v1/openapi.json" \
        --header "Authorization: Bearer $token" \
        --max-time "$MAX_TIME" || status=1
done
if grep -q '"level":"ERROR"' "$WORK/daemon.log"; then
    echo "the daemon logged errors:"; grep '"level":"ERROR"' "$WORK/daemon.log" | head -20
    status=1
fi
exit $status
