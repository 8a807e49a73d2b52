#!/usr/bin/env bash
# The query macros (`sqlx::query_file_as!` and friends in `queue` and
# `store`) check every statement against the schema at compile time. Builds
# read the schema's answers from the committed cache, `.sqlx/`, so they
# need no database; this script keeps that cache true:
#
#   ops/sqlx.sh prepare   rewrite .sqlx/ from a database migrated afresh
#   ops/sqlx.sh check     fail if .sqlx/ differs from what it would write (CI)
#
# Each run creates a throwaway database on the server at SQLX_SERVER_URL
# (default postgres://postgres@127.0.0.1:5432), applies migrations/ to it,
# expands every query macro against it (SQLX_SCHEMA_URL, the variable the
# crates' sqlx.toml name, so the tests' DATABASE_URL never reaches the
# macros) and drops it.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
case $mode in prepare | check) ;; *) echo "usage: $0 prepare|check" >&2; exit 2 ;; esac
server=${SQLX_SERVER_URL:-postgres://postgres@127.0.0.1:5432}
db=dashtam_sqlx_$$
out=$(mktemp -d)
cleanup() {
    psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    rm -rf "$out"
}
trap cleanup EXIT
psql "$server/postgres" -qc "CREATE DATABASE $db" >/dev/null
for m in migrations/*.sql; do
    psql "$server/$db" -q -v ON_ERROR_STOP=1 -1 -f "$m" >/dev/null
done
# The table `sqlx::migrate` keeps (store's `migrate::status` reads it), as
# sqlx creates it.
psql "$server/$db" -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
SQL
# Proc macros are not re-run on an unchanged crate: touch each crate that
# has query macros so that all of them expand, writing to $out.
touch crates/queue/src/lib.rs crates/store/src/lib.rs
SQLX_SCHEMA_URL="$server/$db" SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" \
    cargo check -q --locked -p dashtam-queue -p dashtam-store
if [[ $mode == prepare ]]; then
    rm -rf .sqlx
    mkdir .sqlx
    cp "$out"/query-*.json .sqlx/
    echo "wrote $(ls .sqlx | wc -l) queries to .sqlx/"
else
    if ! diff -r -q .sqlx "$out" >/dev/null; then
        diff -r -q .sqlx "$out" || true
        echo ".sqlx/ is stale: run ops/sqlx.sh prepare and commit it" >&2
        exit 1
    fi
    echo ".sqlx/ matches the schema ($(ls .sqlx | wc -l) queries)"
fi
