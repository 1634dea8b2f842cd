#!/usr/bin/env bash
# Availability of a 3-node cluster (RF=3, QUORUM) while a node dies and comes back.
#
# For each MODE (kill: SIGKILL and restart; stop: SIGSTOP and SIGCONT), start three
# `ringkv serve` processes on 127.0.0.1 with the default gossip interval, run the load
# generator at QUORUM for DURATION_S seconds (CONNECTIONS x PIPELINE in flight, 50/50
# reads and updates, --verify, --verify-final at QUORUM), take node 2 down at DOWN_AT_S
# and bring it back at UP_AT_S. Prints, per mode:
#   - the per-second lines around the death (ops/s, p50, p99, errors),
#   - failed operations in total and from 1 s after the death on,
#   - failovers, verify violations and the final pass (missing / stale).
# Pin with NODE_CPUS / LOADGEN_CPU on a small machine (taskset). Every process it
# starts is killed by PID on exit (trap), also on failure or Ctrl-C.
#
# Usage: [MODES="kill stop"] [DURATION_S=60] [DOWN_AT_S=20] [UP_AT_S=40]
#        [CONNECTIONS=8] [PIPELINE=4] [RATE=] [NODE_CPUS="0 1 0"] [LOADGEN_CPU=1]
#        [BUILD=0] cluster/bench_node_death.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. cluster/lib.sh

MODES="${MODES:-kill stop}"
DURATION_S="${DURATION_S:-60}"
DOWN_AT_S="${DOWN_AT_S:-20}"
UP_AT_S="${UP_AT_S:-40}"
CONNECTIONS="${CONNECTIONS:-8}"
PIPELINE="${PIPELINE:-4}"
RATE="${RATE:-}"
NODE_CPUS="${NODE_CPUS:-0 1 0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
port_base="${PORT_BASE:-17800}"
bin=target/release/ringkv
loadgen=target/release/ringkv-loadgen

[ "$DOWN_AT_S" -lt "$UP_AT_S" ] && [ "$UP_AT_S" -lt "$DURATION_S" ] \
    || { echo "need DOWN_AT_S < UP_AT_S < DURATION_S" >&2; exit 2; }

bench_setup bench-node-death
read -r -a cpus <<<"$NODE_CPUS"

start_node() { # index, data dir
    local seeds=()
    [ "$1" -gt 0 ] && seeds=(--seeds "$(addr 0)")
    taskset -c "${cpus[$1]}" "$bin" serve --listen "$(addr "$1")" --shards 1 --data-dir "$2" \
        --replication-factor 3 --cluster-secret bench-node-death "${seeds[@]}" \
        2>>"$2.log" &
    node_pid[$1]=$!
    pids+=($!)
}

wait_all_up() {
    local deadline=$(($(date +%s) + 120))
    until "$bin" status --host "$(addr 0)" 2>/dev/null | grep -q '^3 nodes (3 up'; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "cluster not up" >&2; exit 1; }
        sleep 0.2
    done
}

for mode in $MODES; do
    dir="$work/$mode"
    mkdir -p "$dir"
    node_pid=()
    for i in 0 1 2; do start_node "$i" "$dir/data$i"; done
    wait_all_up
    rate=()
    [ -n "$RATE" ] && rate=(--rate "$RATE")
    taskset -c "$LOADGEN_CPU" "$loadgen" --hosts "$(addr 0),$(addr 1),$(addr 2)" \
        --consistency quorum --read-ratio 0.5 --keys 100000 --load 20000 --value-size 100 \
        --connections "$CONNECTIONS" --pipeline "$PIPELINE" "${rate[@]}" --warmup 0s \
        --duration "${DURATION_S}s" --verify --verify-final --verify-final-consistency quorum \
        --json "$dir/run.json" >"$dir/run.out" 2>"$dir/run.err" &
    load_pid=$!
    pids+=("$load_pid")
    # The measured phase starts after the load phase: time the death from its first line.
    deadline=$(($(date +%s) + 300))
    # (The per-second lines go to stderr, the final report to stdout.)
    until grep -q '^\[ *1s\]' "$dir/run.err" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "$mode: no live line" >&2; exit 1; }
        sleep 0.05
    done
    t0=$(date +%s%3N)
    sleep_until() { local ms=$(( t0 + $1 * 1000 - $(date +%s%3N) )); [ "$ms" -gt 0 ] && sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))" || true; }
    sleep_until "$((DOWN_AT_S - 1))"
    case "$mode" in
        kill) kill -KILL "${node_pid[2]}"; wait "${node_pid[2]}" 2>/dev/null || true ;;
        stop) kill -STOP "${node_pid[2]}" ;;
    esac
    sleep_until "$((UP_AT_S - 1))"
    case "$mode" in
        kill) start_node 2 "$dir/data2" ;;
        stop) kill -CONT "${node_pid[2]}" ;;
    esac
    code=0
    wait "$load_pid" || code=$?
    echo "== $mode: node 2 down at ${DOWN_AT_S}s, back at ${UP_AT_S}s (loadgen exit $code)"
    awk -v d="$DOWN_AT_S" 'match($0, /^\[ *[0-9]+s\]/) { s = substr($0, 1, RLENGTH); gsub(/[^0-9]/, "", s); if (s + 0 >= d - 2 && s + 0 <= d + 12) print }' "$dir/run.err"
    awk -v d="$DOWN_AT_S" '
        match($0, /^\[ *[0-9]+s\]/) {
            s = substr($0, 1, RLENGTH); gsub(/[^0-9]/, "", s); s += 0
            # "errors 0" or "errors timeout 2, disconnected 1": add up every count.
            rest = $0; sub(/.*errors /, "", rest); sub(/  \(warmup\)/, "", rest)
            n = split(rest, parts, /[^0-9]+/); e = 0
            for (k = 1; k <= n; k++) if (parts[k] != "") e += parts[k]
            total += e; if (s > d + 1) late += e
        }
        END { printf "failed operations: %d in total, %d from 1 s after the death on\n", total, late }' "$dir/run.err"
    grep -E '^(connections|verify|verify-final):' "$dir/run.out" || true
    cleanup
done
