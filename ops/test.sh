#!/usr/bin/env bash
# The whole test suite (the README's test command). Tests create and drop a
# database per test on the server DATABASE_URL names (default: the local
# one). The operator console's browser tests drive Debian's headless
# Chromium: it is installed first when missing (browsers cannot be
# downloaded by a test tool here). Extra arguments go to nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (the console's browser tests)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null \
        || { $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
fi
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
exec cargo nextest run --workspace "$@"
