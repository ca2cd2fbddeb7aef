#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379)
# answer, starting whichever does not, then waits (bounded) until both do.
#
# Run it directly:      bash scripts/services.sh
# or source it and call: ensure_services   (also ensure_postgres / ensure_redis)
#
# SERVICES_WAIT_SECONDS (default 60) bounds the wait for each service.
set -euo pipefail

SERVICES_WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-60}"

_svc_log() { printf '[services] %s\n' "$*"; }
_svc_die() {
  printf '[services] ERROR: %s\n' "$*" >&2
  return 1
}

postgres_ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" = "PONG" ]; }

# _svc_wait NAME CHECK_FUNCTION: poll once a second, at most SERVICES_WAIT_SECONDS times.
_svc_wait() {
  local name="$1" check="$2" i
  for ((i = 0; i < SERVICES_WAIT_SECONDS; i++)); do
    if "$check"; then
      _svc_log "$name is answering"
      return 0
    fi
    sleep 1
  done
  _svc_die "$name did not answer within ${SERVICES_WAIT_SECONDS}s"
}

ensure_postgres() {
  command -v pg_isready >/dev/null 2>&1 || _svc_die "pg_isready not found: PostgreSQL is not installed" || return 1
  if postgres_ready; then
    _svc_log "PostgreSQL already answering on 127.0.0.1:5432"
    return 0
  fi
  # pg_isready exit code 1 means "server is starting / rejecting": do not start a second time.
  local rc=0
  pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1 || rc=$?
  if [ "$rc" -ne 1 ]; then
    local dir version started=0
    for dir in /etc/postgresql/*/main; do
      [ -d "$dir" ] || continue
      version="$(basename "$(dirname "$dir")")"
      started=1
      _svc_log "starting PostgreSQL $version/main: pg_ctlcluster --skip-systemctl-redirect $version main start"
      # Exit code 2 = "cluster is already running", which is fine here.
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || _svc_log "pg_ctlcluster returned $? (continuing to wait)"
    done
    [ "$started" -eq 1 ] || _svc_die "no cluster under /etc/postgresql/*/main to start" || return 1
  else
    _svc_log "PostgreSQL is starting up; waiting"
  fi
  _svc_wait PostgreSQL postgres_ready
}

ensure_redis() {
  command -v redis-cli >/dev/null 2>&1 || _svc_die "redis-cli not found: Redis is not installed" || return 1
  if redis_ready; then
    _svc_log "Redis already answering on 127.0.0.1:6379"
    return 0
  fi
  _svc_log "starting Redis: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no"
  local logargs=()
  if [ -d /var/log/redis ] && [ -w /var/log/redis ]; then
    logargs=(--logfile /var/log/redis/tandem.log)
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no "${logargs[@]}" ||
    _svc_log "redis-server returned $? (continuing to wait)"
  _svc_wait Redis redis_ready
}

# Tries both, so one failure message does not hide the other's state.
ensure_services() {
  local rc=0
  ensure_postgres || rc=1
  ensure_redis || rc=1
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services
fi
