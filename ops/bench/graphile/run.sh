#!/usr/bin/env bash
# Side by side on one PostgreSQL server: `dashtam bench drain` and
# graphile-worker 0.17 (its batching: a local queue of the same size as our
# fetch batch, batched completions), alternating, at both durability
# settings. One JSON line per run.
#
#   ops/bench/graphile/run.sh target/release/dashtam [jobs] [runs]
#
# Needs Node.js 18+ and npm (the registry) for graphile-worker.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dashtam=$(realpath "$1")
jobs=${2:-200000}
runs=${3:-3}
(cd "$here" && npm ci --no-audit --no-fund --silent)
for sc in off on; do
    for _ in $(seq "$runs"); do
        DASHTAM__WORKER__SYNCHRONOUS_COMMIT=$([ $sc = on ] && echo true || echo false) \
            "$dashtam" bench drain --jobs "$jobs" --concurrency 24 2>/dev/null | tail -n1
        node "$here/drain.mjs" --jobs "$jobs" --concurrency 24 --batch 100 --sync-commit $sc
    done
done
