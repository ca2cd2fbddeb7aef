#!/usr/bin/env bash
# Starts a local three-node tandem cluster against this machine's PostgreSQL (127.0.0.1:5432)
# and Redis (127.0.0.1:6379), starting them when they do not answer.
#
# Usage: bash scripts/cluster.sh [NODES]        (default 3; ports 8787, 8788, ...)
# Environment:
#   CLUSTER_DB        database to use (created if missing; default tandem_cluster)
#   CLUSTER_PG_USER   PostgreSQL user (default postgres; trust auth on loopback)
#   TANDEM_AUTH_SECRET  when set, the nodes run secured (they must share it); else open
#                     development mode on loopback
# Every node logs to target/cluster/node-N.log; Ctrl-C stops them all.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/services.sh
. "$SCRIPT_DIR/services.sh"

NODES="${1:-3}"
DB="${CLUSTER_DB:-tandem_cluster}"
PG_USER="${CLUSTER_PG_USER:-postgres}"
case "$DB" in *[!a-z0-9_]* | "") echo "CLUSTER_DB must be lower-case letters, digits, _" >&2; exit 2 ;; esac

ensure_services
if ! psql -h 127.0.0.1 -U "$PG_USER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql -h 127.0.0.1 -U "$PG_USER" -d postgres -qc "CREATE DATABASE $DB"
  echo "[cluster] created database $DB"
fi

cd "$REPO_ROOT"
cargo build --release --bin tandem
BIN="$REPO_ROOT/target/release/tandem"
LOGS="$REPO_ROOT/target/cluster"
mkdir -p "$LOGS"

pids=()
stop() {
  echo "[cluster] stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
}
trap stop INT TERM EXIT

for ((i = 0; i < NODES; i++)); do
  port=$((8787 + i))
  "$BIN" serve --addr "127.0.0.1:$port" --data-dir "$LOGS/data-$i" --node-id "node-$i" \
    --database-url "postgres://$PG_USER@127.0.0.1:5432/$DB" \
    --redis-url "redis://127.0.0.1:6379" >"$LOGS/node-$i.log" 2>&1 &
  pids+=("$!")
  echo "[cluster] node-$i on http://127.0.0.1:$port (log: $LOGS/node-$i.log)"
done
echo "[cluster] ready: try two browsers on http://127.0.0.1:8787/ and http://127.0.0.1:8788/"
wait
