#!/usr/bin/env bash
# The whole test suite (the README's test command). Tests create and drop a
# database per test on the server DATABASE_URL names (default: the local
# one). Debian packages some tests drive (Chromium, PgBouncer) are
# installed first when missing (a test tool cannot download them here).
# Extra arguments go to nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests drive: headless Chromium (the console's browser
# tests) and PgBouncer (the sync path through a transaction pooler).
missing=()
{ command -v chromedriver && command -v chromium; } >/dev/null 2>&1 || missing+=(chromium chromium-driver)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (for the tests)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
exec cargo nextest run --workspace "$@"
