#!/usr/bin/env bash
# Runs the benchmark workloads against tandem, Hocuspocus and the y-websocket server, one
# server at a time (each restarted fresh for each workload, on a free loopback port), and
# writes a Markdown report with absolute numbers and ratios.
#
#   bench/run.sh [--quick|--full] [--servers tandem,hocuspocus,ywebsocket]
#                [--workloads w1,w2,w3,w4,w5,w6,w7,w8] [--size key=value ...] [--report PATH]
#                [--keep-results]
#   bench/run.sh --capacity [--quick] [--servers tandem,hocuspocus,ywebsocket,floor] ...
#
# --quick (default) takes seconds and is the CI smoke test: it exits non-zero when a workload
# fails a correctness check. --full runs the published sizes and writes bench/RESULTS.md
# (quick mode writes bench/results/RESULTS-quick.md unless --report says otherwise).
# --capacity runs W9 (capacity at the latency target, CPU per delivery at a fixed load) with
# the server pinned to CPU 0 and the generator to CPU 1 (taskset; SERVER_CPU, GENERATOR_CPU), against the three servers and the floor relay (`tandem-bench floor`), at full sizes
# unless --quick is given, and writes the "Capacity" section of bench/RESULTS.md (quick:
# bench/results/RESULTS-capacity-quick.md).
#
# Environment: CARGO_TARGET_DIR (default <repo>/target), TANDEM_BIN (default: the release
# `tandem` binary built here), TRACES (default <repo>/../shared/traces), TANDEM_BENCH_FLAGS
# (extra `tandem serve` flags; default lifts the message and connection rate limits),
# TANDEM_DIALECT=hocuspocus (tandem's clients speak the Hocuspocus dialect on /ws, as
# @hocuspocus/provider does, instead of the stock protocol on /ws/{doc}), PEER_PERSISTENCE=1
# (the peers store their documents on disk in the run's temporary directory: the y-websocket
# server with y-leveldb, YPERSISTENCE; Hocuspocus with @hocuspocus/extension-sqlite, whose
# package bench/peers/persistence is installed on first use, compiling the sqlite3 addon from
# source, a few CPU-minutes; use with --report so the in-memory numbers are not replaced).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
mode=""
servers=""
workloads=""
capacity=false
report=""
keep=false
sizes=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --capacity) capacity=true ;;
        --servers) servers="$2"; shift ;;
        --workloads) workloads="$2"; shift ;;
        --size) sizes+=(--size "$2"); shift ;;
        --report) report="$2"; shift ;;
        --keep-results) keep=true ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if $capacity; then
    mode="${mode:-full}"
    servers="${servers:-tandem,hocuspocus,ywebsocket,floor}"
    workloads="${workloads:-w9}"
else
    mode="${mode:-quick}"
    servers="${servers:-tandem,hocuspocus,ywebsocket}"
    workloads="${workloads:-w1,w2,w3,w4,w5,w6,w7,w8}"
fi
if [[ -z "$report" ]]; then
    if [[ $mode == full ]]; then report="$here/RESULTS.md"
    elif $capacity; then report="$here/results/RESULTS-capacity-quick.md"
    else report="$here/results/RESULTS-quick.md"; fi
fi

log() { echo "[run.sh] $*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
traces="${TRACES:-$root/../shared/traces}"
[[ -f "$traces/seph-blog1.json.gz" ]] || { log "traces not found in $traces (set TRACES)"; exit 2; }
results="$here/results/$mode"
$capacity && results="$here/results/capacity-$mode"
# A run with the peers' persistence keeps its files apart: it would otherwise replace the
# in-memory run's, from which a full report is written.
[[ "${PEER_PERSISTENCE:-0}" = 1 ]] && results="$results-persistence"
# --keep-results keeps the result files of earlier runs in this mode (the report then covers
# them too; the pairs run now replace theirs).
$keep || rm -rf "$results"
mkdir -p "$results/logs"
workdir="$(mktemp -d)"

# Many sockets: raise the open-file limit for the servers and the generator (the generator
# also raises its own soft limit with setrlimit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
log "open-file limit $(ulimit -n)"

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# Capacity mode: the server on one core, the generator on another (one runtime thread), so the
# numbers measure the server and not the two competing for the same cores.
pin_server=()
pin_gen=()
gen_threads=()
if $capacity; then
    server_cpu="${SERVER_CPU:-0}"
    gen_cpu="${GENERATOR_CPU:-1}"
    command -v taskset >/dev/null || { log "taskset (util-linux) is required for --capacity"; exit 2; }
    if (( $(nproc) < 2 )); then
        log "--capacity needs two CPUs (found $(nproc))"; exit 2
    fi
    pin_server=(taskset -c "$server_cpu")
    pin_gen=(taskset -c "$gen_cpu")
    gen_threads=(--threads 1)
    log "server pinned to CPU $server_cpu, generator to CPU $gen_cpu"
fi
server_pid=""
gen_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
cleanup() {
    if [[ -n "$gen_pid" ]]; then
        kill -TERM "$gen_pid" 2>/dev/null || true
        wait "$gen_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

needs_node=false
needs_tandem=false
IFS=',' read -r -a server_list <<<"$servers"
for s in "${server_list[@]}"; do
    case "$s" in
        tandem) needs_tandem=true ;;
        hocuspocus|ywebsocket) needs_node=true ;;
        floor) ;;
        *) log "unknown server $s (tandem, hocuspocus, ywebsocket, floor)"; exit 2 ;;
    esac
done

node_version=""
if $needs_node; then
    command -v node >/dev/null || { log "node is required for the peer servers"; exit 2; }
    node_version="$(node --version)"
    [[ "${node_version#v}" =~ ^([0-9]+) ]] && (( BASH_REMATCH[1] >= 20 )) \
        || { log "node >= 20 required, found $node_version"; exit 2; }
    log "installing the peer servers (npm ci)"
    (cd "$here/peers" && npm ci --no-audit --no-fund --loglevel=error >"$results/logs/npm.log" 2>&1) \
        || { cat "$results/logs/npm.log" >&2; exit 2; }
    if [[ "${PEER_PERSISTENCE:-0}" = 1 && ",$servers," = *,hocuspocus,* ]] \
        && ! [[ -f "$here/peers/persistence/node_modules/sqlite3/build/Release/node_sqlite3.node" ]]; then
        # Only here: sqlite3 is a native addon, built from source against the local node's
        # headers (npm_config_nodedir: its parent directory, e.g. /usr for /usr/include/node).
        nodedir="${npm_config_nodedir:-$(dirname "$(dirname "$(command -v node)")")}"
        log "installing @hocuspocus/extension-sqlite (npm ci, sqlite3 built from source: a few minutes)"
        (cd "$here/peers/persistence" && npm_config_nodedir="$nodedir" npm_config_build_from_source=true \
            npm ci --no-audit --no-fund --loglevel=error >"$results/logs/npm-persistence.log" 2>&1) \
            || { cat "$results/logs/npm-persistence.log" >&2; exit 2; }
    fi
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
    for _ in $(seq 1 200); do
        kill -0 "$2" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_server() { # server port logfile
    local s="$1" port="$2" logf="$3"
    case "$s" in
        tandem)
            rm -rf "$workdir/tandem-data"
            # Every client connects from 127.0.0.1 and the writers replay as fast as they can:
            # lift the per-IP connection rate and per-connection message rate limits (the
            # Node peers have none). Durable storage stays on.
            # shellcheck disable=SC2086
            ${pin_server[@]+"${pin_server[@]}"} "$tandem_bin" serve --addr "127.0.0.1:$port" --data-dir "$workdir/tandem-data" \
                ${TANDEM_BENCH_FLAGS:---message-rate 10000000 --message-burst 10000000 --connection-rate 1000000 --connection-burst 1000000} \
                >"$logf" 2>&1 &
            ;;
        hocuspocus)
            if [[ "${PEER_PERSISTENCE:-0}" = 1 ]]; then
                # @hocuspocus/extension-sqlite (bench/peers/persistence), a fresh file each time.
                rm -f "$workdir/hocuspocus.sqlite" "$workdir/hocuspocus.sqlite-journal"
                ${pin_server[@]+"${pin_server[@]}"} env SQLITE_DATABASE="$workdir/hocuspocus.sqlite" HOST=127.0.0.1 PORT="$port" NODE_ENV=production \
                    node "$here/peers/hocuspocus-server.mjs" >"$logf" 2>&1 &
            else
                ${pin_server[@]+"${pin_server[@]}"} env -u SQLITE_DATABASE HOST=127.0.0.1 PORT="$port" NODE_ENV=production \
                    node "$here/peers/hocuspocus-server.mjs" >"$logf" 2>&1 &
            fi
            ;;
        ywebsocket)
            if [[ "${PEER_PERSISTENCE:-0}" = 1 ]]; then
                # y-leveldb (an optional dependency of y-websocket, installed by npm ci).
                rm -rf "$workdir/yleveldb"
                ${pin_server[@]+"${pin_server[@]}"} env -u CALLBACK_URL YPERSISTENCE="$workdir/yleveldb" HOST=127.0.0.1 PORT="$port" \
                    node "$here/peers/node_modules/y-websocket/bin/server.js" >"$logf" 2>&1 &
            else
                # No YPERSISTENCE (in-memory documents, as the other peer) and no CALLBACK_URL.
                ${pin_server[@]+"${pin_server[@]}"} env -u YPERSISTENCE -u CALLBACK_URL HOST=127.0.0.1 PORT="$port" \
                    node "$here/peers/node_modules/y-websocket/bin/server.js" >"$logf" 2>&1 &
            fi
            ;;
        floor)
            # The same fan-out without CRDT or protocol, on one thread.
            ${pin_server[@]+"${pin_server[@]}"} "$bench_bin" floor --addr "127.0.0.1:$port" >"$logf" 2>&1 &
            ;;
    esac
    server_pid=$!
}

failed=()
IFS=',' read -r -a workload_list <<<"$workloads"
for s in "${server_list[@]}"; do
    for w in "${workload_list[@]}"; do
        port="$("$bench_bin" free-port)"
        start_server "$s" "$port" "$results/logs/$s-$w.server.log"
        if ! wait_ready "$port" "$server_pid"; then
            log "$s did not start (log: $results/logs/$s-$w.server.log)"
            tail -n 20 "$results/logs/$s-$w.server.log" >&2 || true
            failed+=("$s/$w: server did not start")
            stop_server
            continue
        fi
        log "$s $w (pid $server_pid, port $port)"
        # In the background so that a signal reaches the traps at once.
        dialect=()
        [ "$s" = tandem ] && [ "${TANDEM_DIALECT:-stock}" = hocuspocus ] && dialect=(--tandem-hocuspocus)
        ${pin_gen[@]+"${pin_gen[@]}"} "$bench_bin" run --server "$s" --addr "127.0.0.1:$port" --pid "$server_pid" ${dialect[@]+"${dialect[@]}"} \
            ${gen_threads[@]+"${gen_threads[@]}"} --mode "$mode" --workloads "$w" --traces "$traces" --cache "$here/results/cache" \
            ${sizes[@]+"${sizes[@]}"} --out "$results/$s-$w.json" \
            >"$results/logs/$s-$w.jsonl" 2>"$results/logs/$s-$w.log" &
        gen_pid=$!
        if ! wait "$gen_pid"; then
            failed+=("$s/$w")
            grep 'FAILED' "$results/logs/$s-$w.log" | cut -c1-300 >&2 || true
        fi
        gen_pid=""
        if ! kill -0 "$server_pid" 2>/dev/null; then
            log "$s exited during $w"
            failed+=("$s/$w: server exited")
        fi
        stop_server
    done
done

versions=()
if $needs_node; then
    pkgv() { node -p "require('$here/peers/node_modules/$1/package.json').version"; }
    peers="Hocuspocus $(pkgv @hocuspocus/server), y-websocket $(pkgv y-websocket), yjs $(pkgv yjs), node $node_version"
    if [[ "${PEER_PERSISTENCE:-0}" = 1 ]]; then
        peers+="; on disk: y-websocket with y-leveldb $(pkgv y-leveldb)"
        if [[ -d "$here/peers/persistence/node_modules" ]]; then
            pkgp() { node -p "require('$here/peers/persistence/node_modules/$1/package.json').version"; }
            peers+=", Hocuspocus with @hocuspocus/extension-sqlite $(pkgp @hocuspocus/extension-sqlite) (sqlite3 $(pkgp sqlite3))"
        fi
    fi
    versions+=(--meta "peers=$peers")
fi
shopt -s nullglob
files=("$results"/*.json)
if $capacity && [[ ${#files[@]} -gt 0 ]]; then
    mkdir -p "$(dirname "$report")"
    "$bench_bin" report-capacity "${files[@]}" --out "$report" \
        --meta "machine=$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)" \
        --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
        --meta "load average=1/5/15 min: $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after" \
        --meta "command=bench/run.sh --capacity --$mode --servers $servers ${sizes[*]:-}" \
        ${versions[@]+"${versions[@]}"}
    log "capacity section written to $report"
elif [[ ${#files[@]} -gt 0 ]]; then
    mkdir -p "$(dirname "$report")"
    notes=()
    if [[ $mode == full && -f "$here/RESULTS-NOTES.md" ]]; then notes=(--notes "$here/RESULTS-NOTES.md"); fi
    # The browser bundle, when the wasm package is built: wasm + JS, each gzip -9 (as
    # wasm/build.sh reports it).
    bundle=()
    if compgen -G "$root/wasm/pkg/*.wasm" >/dev/null; then
        total=0
        for f in "$root"/wasm/pkg/*.js "$root"/wasm/pkg/*.wasm; do
            total=$((total + $(gzip -9 -c "$f" | wc -c)))
        done
        bundle=(--meta "bundle=$total bytes gzipped (wasm + JS)")
    fi
    "$bench_bin" report "${files[@]}" --out "$report" ${notes[@]+"${notes[@]}"} \
        --meta "machine=$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)" \
        --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
        --meta "load average=1/5/15 min: $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after (other work on the machine competes with server and generator)" \
        --meta "command=bench/run.sh --$mode --servers $servers --workloads $workloads ${sizes[*]:-}" \
        ${versions[@]+"${versions[@]}"} ${bundle[@]+"${bundle[@]}"}
    log "report written to $report"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all workloads passed their checks"
