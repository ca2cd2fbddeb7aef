#!/usr/bin/env bash
# Runs the several-node workloads (C1 ingest, C2 cross-node fan-out, C3 failover) against
# several setups side by side, each started fresh for each workload on loopback ports:
#
#   tandem-3      three `tandem serve` nodes sharing one PostgreSQL database and one Redis
#   tandem-1      one `tandem serve` node on PostgreSQL (the baseline of the same run)
#   hocuspocus-2  two Hocuspocus 3 instances with @hocuspocus/extension-redis on one Redis
#
# (any `tandem-N` or `hocuspocus-N` works; `tandem-N+nocompact` is a diagnostic variant whose
# nodes do not compact during the run: `--compact-after 100000000 --compact-after-bytes 4GiB`),
# and writes the "Several nodes" section of a Markdown report with absolute numbers and ratios.
#
#   bench/cluster.sh [--quick|--full] [--setups tandem-3,tandem-1,hocuspocus-2]
#                    [--workloads c1,c2,c3] [--size key=value ...] [--report PATH]
#
# --quick (default) takes seconds and is a CI check: it exits non-zero when a workload fails
# a correctness check (a lost delivery, a sid below the acknowledged count, an acknowledged
# update missing, a client that did not fail over). --full runs the published sizes and
# replaces the "Several nodes" section of bench/RESULTS.md (quick mode writes
# bench/results/RESULTS-nodes-quick.md unless --report says otherwise). C3 needs two nodes or
# more and is skipped for one-node setups.
#
# Every run gets its own PostgreSQL database (created, then dropped) and its own redis-server
# on a free port (started, then stopped); nothing else on the machine is touched.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target), TANDEM_BIN (default: the release
# `tandem` binary built here), PG_URL (default postgres://postgres@127.0.0.1:5432: a server
# where that user may create databases), TANDEM_BENCH_FLAGS (extra `tandem serve` flags;
# default lifts the message and connection rate limits, as bench/run.sh does).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
mode=quick
setups=tandem-3,tandem-1,hocuspocus-2
workloads=c1,c2,c3
report=""
sizes=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --setups) setups="$2"; shift ;;
        --workloads) workloads="$2"; shift ;;
        --size) sizes+=(--size "$2"); shift ;;
        --report) report="$2"; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "$report" ]]; then
    if [[ $mode == full ]]; then report="$here/RESULTS.md"; else report="$here/results/RESULTS-nodes-quick.md"; fi
fi

log() { echo "[cluster.sh] $*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
pg_url="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
results="$here/results/nodes-$mode"
rm -rf "$results"
mkdir -p "$results/logs"
workdir="$(mktemp -d)"
nonce="$(date +%s)$$"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# Everything this script started: node pids, the redis-server pid, the current database.
node_pids=()
redis_pid=""
db=""
gen_pid=""
stop_pid() { # pid
    local p="$1"
    if [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
}
stop_all() {
    for p in ${node_pids[@]+"${node_pids[@]}"}; do stop_pid "$p"; done
    node_pids=()
    stop_pid "$redis_pid"
    redis_pid=""
    if [[ -n "$db" ]]; then
        psql -q "$pg_url/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 \
            || log "could not drop database $db"
        db=""
    fi
}
cleanup() {
    if [[ -n "$gen_pid" ]]; then
        kill -TERM "$gen_pid" 2>/dev/null || true
        wait "$gen_pid" 2>/dev/null || true
    fi
    stop_all
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

needs_node=false
needs_tandem=false
needs_pg=false
IFS=',' read -r -a setup_list <<<"$setups"
for s in "${setup_list[@]}"; do
    [[ "$s" =~ ^(tandem|hocuspocus)-([1-9][0-9]*)(\+nocompact)?$ ]] \
        || { log "unknown setup $s (tandem-N, tandem-N+nocompact, hocuspocus-N)"; exit 2; }
    case "${BASH_REMATCH[1]}" in
        tandem) needs_tandem=true; needs_pg=true ;;
        hocuspocus) needs_node=true ;;
    esac
done
command -v redis-server >/dev/null || { log "redis-server is required"; exit 2; }
if $needs_pg; then
    command -v psql >/dev/null || { log "psql is required"; exit 2; }
    psql -q "$pg_url/postgres" -c 'SELECT 1' >/dev/null \
        || { log "PostgreSQL does not answer at $pg_url (set PG_URL)"; exit 2; }
fi

node_version=""
if $needs_node; then
    command -v node >/dev/null || { log "node is required for Hocuspocus"; exit 2; }
    node_version="$(node --version)"
    log "installing the peer servers (npm ci)"
    (cd "$here/peers" && npm ci --no-audit --no-fund --loglevel=error >"$results/logs/npm.log" 2>&1) \
        || { cat "$results/logs/npm.log" >&2; exit 2; }
fi

log "building the load generator (release)"
cargo build --release --quiet -p tandem-bench
bench_bin="$CARGO_TARGET_DIR/release/tandem-bench"
tandem_bin="${TANDEM_BIN:-}"
if $needs_tandem && [[ -z "$tandem_bin" ]]; then
    log "building tandem (release)"
    cargo build --release --quiet -p tandem-server --bin tandem
    tandem_bin="$CARGO_TARGET_DIR/release/tandem"
fi

wait_ready() { # port pid
    for _ in $(seq 1 300); do
        kill -0 "$2" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_redis() { # logfile; sets redis_port, redis_pid
    redis_port="$("$bench_bin" free-port)"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --daemonize no --protected-mode yes >"$1" 2>&1 &
    redis_pid=$!
    wait_ready "$redis_port" "$redis_pid"
}

start_node() { # kind index nodes port logfile variant; appends to node_pids
    local kind="$1" i="$2" n="$3" port="$4" logf="$5" variant="$6"
    case "$kind" in
        tandem)
            local cluster=()
            if (( n > 1 )); then cluster=(--redis-url "redis://127.0.0.1:$redis_port" --node-id "n$i"); fi
            if [[ $variant == nocompact ]]; then cluster+=(--compact-after 100000000 --compact-after-bytes 4GiB); fi
            # Every client connects from 127.0.0.1 and the writers send as fast as their
            # window allows: lift the per-IP connection rate and per-connection message rate
            # limits (the Node peers have none). Durable storage stays on.
            # shellcheck disable=SC2086
            "$tandem_bin" serve --addr "127.0.0.1:$port" --database-url "$pg_url/$db" \
                ${cluster[@]+"${cluster[@]}"} \
                ${TANDEM_BENCH_FLAGS:---message-rate 10000000 --message-burst 10000000 --connection-rate 1000000 --connection-burst 1000000} \
                >"$logf" 2>&1 &
            ;;
        hocuspocus)
            local redis=()
            if (( n > 1 )); then redis=(REDIS_URL="redis://127.0.0.1:$redis_port" INSTANCE="h$i"); fi
            env HOST=127.0.0.1 PORT="$port" NODE_ENV=production ${redis[@]+"${redis[@]}"} \
                node "$here/peers/hocuspocus-server.mjs" >"$logf" 2>&1 &
            ;;
    esac
    node_pids+=($!)
}

failed=()
IFS=',' read -r -a workload_list <<<"$workloads"
for setup in "${setup_list[@]}"; do
    base="${setup%%+*}"
    variant=""
    [[ $setup == *+* ]] && variant="${setup#*+}"
    kind="${base%-*}"
    n="${base##*-}"
    for w in "${workload_list[@]}"; do
        if [[ $w == c3 ]] && (( n < 2 )); then
            log "$setup $w: skipped (failover needs two nodes or more)"
            continue
        fi
        tag="$setup-$w"
        if (( n > 1 )); then
            start_redis "$results/logs/$tag.redis.log" \
                || { failed+=("$tag: redis did not start"); stop_all; continue; }
        fi
        if [[ $kind == tandem ]]; then
            db="bench_${nonce}_${setup//[^a-z0-9]/_}_$w"
            psql -q "$pg_url/postgres" -c "CREATE DATABASE $db" >/dev/null \
                || { failed+=("$tag: could not create database"); db=""; stop_all; continue; }
        fi
        ports=()
        ok=true
        for ((i = 0; i < n; i++)); do
            port="$("$bench_bin" free-port)"
            ports+=("$port")
            start_node "$kind" "$i" "$n" "$port" "$results/logs/$tag.node$i.log" "$variant"
            # One node at a time: tandem nodes create or migrate the schema on start.
            if ! wait_ready "$port" "${node_pids[$i]}"; then
                log "$tag: node $i did not start (log: $results/logs/$tag.node$i.log)"
                tail -n 20 "$results/logs/$tag.node$i.log" >&2 || true
                ok=false
                break
            fi
        done
        if ! $ok; then
            failed+=("$tag: a node did not start")
            stop_all
            continue
        fi
        addrs="$(printf '127.0.0.1:%s,' "${ports[@]}")"
        pids="$(IFS=,; echo "${node_pids[*]}")"
        extra=()
        [[ -n "$redis_pid" ]] && extra+=(--aux-pid "$redis_pid")
        [[ -n "$db" ]] && extra+=(--db-name "$db")
        log "$tag (pids $pids, ports ${ports[*]})"
        "$bench_bin" run --server "$kind" --setup "$setup" --addr "${addrs%,}" --pid "$pids" \
            ${extra[@]+"${extra[@]}"} --mode "$mode" --workloads "$w" \
            ${sizes[@]+"${sizes[@]}"} --out "$results/$tag.json" \
            >"$results/logs/$tag.jsonl" 2>"$results/logs/$tag.log" &
        gen_pid=$!
        if ! wait "$gen_pid"; then
            failed+=("$tag")
            grep 'FAILED\|did not run' "$results/logs/$tag.log" | cut -c1-400 >&2 || true
        fi
        gen_pid=""
        if [[ $kind == tandem ]]; then # each node's metrics after the run, for diagnosis
            for ((i = 0; i < n; i++)); do
                curl -sf "http://127.0.0.1:${ports[$i]}/metrics" >"$results/logs/$tag.node$i.metrics" || true
            done
        fi
        for ((i = 0; i < n; i++)); do
            if [[ $w == c3 && $i == 0 ]]; then continue; fi # killed on purpose
            if ! kill -0 "${node_pids[$i]}" 2>/dev/null; then
                log "$tag: node $i exited during the run (log: $results/logs/$tag.node$i.log)"
                failed+=("$tag: node $i exited")
            fi
        done
        stop_all
    done
done

versions=()
if $needs_node; then
    pkgv() { node -p "require('$here/peers/node_modules/$1/package.json').version"; }
    versions+=(--meta "peers=Hocuspocus $(pkgv @hocuspocus/server) with @hocuspocus/extension-redis $(pkgv @hocuspocus/extension-redis), yjs $(pkgv yjs), node $node_version")
fi
versions+=(--meta "services=$(psql -tA "$pg_url/postgres" -c 'SHOW server_version' 2>/dev/null | sed 's/^/PostgreSQL /;s/ (.*//') (synchronous_commit $(psql -tA "$pg_url/postgres" -c 'SHOW synchronous_commit' 2>/dev/null)), $(redis-server --version | awk '{print "Redis " substr($3, 3)}')")
shopt -s nullglob
files=("$results"/*.json)
if [[ ${#files[@]} -gt 0 ]]; then
    mkdir -p "$(dirname "$report")"
    "$bench_bin" report-nodes "${files[@]}" --out "$report" \
        --meta "machine=$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); every node, PostgreSQL, Redis and the load generator share these cores" \
        --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
        --meta "load average=1/5/15 min: $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after" \
        --meta "command=bench/cluster.sh --$mode --setups $setups --workloads $workloads ${sizes[*]:-}" \
        ${versions[@]+"${versions[@]}"}
    log "report written to $report"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all workloads passed their checks"
