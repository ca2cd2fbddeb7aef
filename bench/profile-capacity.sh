#!/usr/bin/env bash
# Profiles a server at W9's fixed load (tandem and the floor relay by default): the server
# pinned to CPU 0, the generator to CPU 1, and one tool attached to the server for the typing
# window only (after every client joined and saw everyone's presence). One run per tool, each
# on a fresh server:
#   stat   perf stat -e task-clock,context-switches,cpu-migrations,… (counts)
#   strace strace -c -f (system calls by count and time; slows the server, so counts only)
#   record perf record --call-graph (call graphs; `perf report -i <file>` afterwards)
#
#   bench/profile-capacity.sh [--servers tandem,floor] [--tools stat,strace,record]
#                             [--size key=value ...] [--out DIR]
#
# Sizes default to W9's full fixed load (w9_clients=1000, w9_fixed_typists, w9_fixed_seconds)
# with no ladder (w9_max_typists=0). Environment: CARGO_TARGET_DIR, TANDEM_BIN, SERVER_CPU,
# GENERATOR_CPU as for bench/run.sh; CALL_GRAPH=dwarf for call graphs through code built
# without frame pointers (default fp).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
servers=tandem,floor
tools=stat,strace,record
out="$here/results/profile"
sizes=(--size w9_max_typists=0)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --servers) servers="$2"; shift ;;
        --tools) tools="$2"; shift ;;
        --size) sizes+=(--size "$2"); shift ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "profile-capacity.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "[profile] $*" >&2; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
server_cpu="${SERVER_CPU:-0}"
gen_cpu="${GENERATOR_CPU:-1}"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet -p tandem-bench
bench_bin="$CARGO_TARGET_DIR/release/tandem-bench"
tandem_bin="${TANDEM_BIN:-}"
if [[ ",$servers," == *,tandem,* && -z "$tandem_bin" ]]; then
    cargo build --release --quiet -p tandem-server --bin tandem
    tandem_bin="$CARGO_TARGET_DIR/release/tandem"
fi
# How long a tool stays attached: 8 s, inside the fixed load's 10 s of typing (full sizes), so
# that the window holds typing only; with w9_fixed_seconds=S, S - 2.
seconds=8
for s in "${sizes[@]}"; do
    [[ "$s" == w9_fixed_seconds=* ]] && seconds="$(awk -v s="${s#*=}" 'BEGIN { print (s > 3 ? s - 2 : 1) }')"
done

server_pid=""
tool_pid=""
workdir="$(mktemp -d)"
cleanup() {
    [[ -n "$tool_pid" ]] && kill -INT "$tool_pid" 2>/dev/null || true
    [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

IFS=',' read -r -a server_list <<<"$servers"
IFS=',' read -r -a tool_list <<<"$tools"
for s in "${server_list[@]}"; do
    for t in "${tool_list[@]}"; do
        port="$("$bench_bin" free-port)"
        case "$s" in
            tandem)
                rm -rf "$workdir/data"
                taskset -c "$server_cpu" "$tandem_bin" serve --addr "127.0.0.1:$port" --data-dir "$workdir/data" \
                    --message-rate 10000000 --message-burst 10000000 --connection-rate 1000000 --connection-burst 1000000 \
                    >"$out/$s-$t.server.log" 2>&1 &
                ;;
            floor)
                taskset -c "$server_cpu" "$bench_bin" floor --addr "127.0.0.1:$port" >"$out/$s-$t.server.log" 2>&1 &
                ;;
            *) log "unknown server $s (tandem, floor)"; exit 2 ;;
        esac
        server_pid=$!
        for _ in $(seq 1 200); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.05
        done
        log "$s $t (pid $server_pid)"
        genlog="$out/$s-$t.generator.log"
        taskset -c "$gen_cpu" "$bench_bin" run --server "$s" --addr "127.0.0.1:$port" --pid "$server_pid" \
            --threads 1 --mode full --workloads w9 "${sizes[@]}" --out "$out/$s-$t.json" \
            >/dev/null 2>"$genlog" &
        gen=$!
        until grep -q 'w9: typing' "$genlog" 2>/dev/null; do
            kill -0 "$gen" 2>/dev/null || { log "generator ended before typing (see $genlog)"; break; }
            sleep 0.05
        done
        case "$t" in
            stat)
                perf stat -e task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions \
                    -p "$server_pid" -o "$out/$s-stat.txt" -- sleep "$seconds" ;;
            strace)
                timeout -s INT "$seconds" strace -c -f -p "$server_pid" -o "$out/$s-strace.txt" || true ;;
            record)
                perf record --call-graph "${CALL_GRAPH:-fp}" -p "$server_pid" -o "$out/$s-perf.data" -- sleep "$seconds" 2>/dev/null ;;
            *) log "unknown tool $t (stat, strace, record)"; exit 2 ;;
        esac
        wait "$gen" || log "generator reported a failure (see $genlog)"
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    done
done
log "results in $out"
