#!/usr/bin/env bash
# Failure detection and recovery times of a real 3-node cluster (issue 5's timing bars).
#
# For each gossip interval given, start three `ringkv serve` processes on 127.0.0.1
# (RF=3, one shard each, nodes 2 and 3 seeding node 1), then run TRIALS trials of:
#   detection: SIGKILL node 3, time until both survivors' `ringkv status` show it down;
#   recovery:  restart node 3 (same data dir, so same node id and tokens, new
#              generation), time from the spawn until both survivors show it up;
#              also printed: when the restarted process first answered `status`
#              itself (its startup share of the recovery time).
# Status is polled every 20 ms (each poll also costs one `ringkv status` per survivor,
# a few ms), so each figure is late by up to ~20 ms plus that cost. Between trials the
# cluster settles for SETTLE_INTERVALS gossip intervals after everything is up again, so
# the detector judges node 3 against a window of fresh heartbeats.
#
# Prints one line per trial and p50 (nearest rank) / max per interval. Every process it
# starts is killed by PID on exit (trap), also on failure or Ctrl-C.
#
# Usage: cluster/bench_failure_detection.sh [--trials N] [--intervals "1000 200"]
#            [--bin target/release/ringkv] [--base-port 17600] [--phi 8]
set -euo pipefail

TRIALS=10
INTERVALS="1000 200"
BIN=target/release/ringkv
BASE_PORT=17600
PHI=8
SETTLE_INTERVALS=10
POLL_S=0.02
# Give up on one wait after this long (a wedged cluster must not hang the script).
WAIT_LIMIT_S=300

while [ $# -gt 0 ]; do
    case "$1" in
        --trials) TRIALS="$2"; shift 2 ;;
        --intervals) INTERVALS="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --base-port) BASE_PORT="$2"; shift 2 ;;
        --phi) PHI="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || { echo "no ringkv binary at $BIN (cargo build --release --bin ringkv)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/ringkv-fd-bench.XXXXXX)
declare -a PIDS=("" "" "")

cleanup() {
    for pid in "${PIDS[@]}"; do
        if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

addr_of() { echo "127.0.0.1:$(( BASE_PORT + 10 * $1 ))"; }

# start_node I INTERVAL: node I (0-based) in the background; node 0 is the seed.
start_node() {
    local i=$1 interval=$2 seeds=()
    if [ "$i" -gt 0 ]; then seeds=(--seeds "$(addr_of 0)"); fi
    RUST_LOG=warn "$BIN" serve --listen "$(addr_of "$i")" --data-dir "$WORK/n$i" --shards 1 \
        --replication-factor 3 --cluster-secret fd-bench-secret \
        --gossip-interval-ms "$interval" --phi-convict-threshold "$PHI" \
        "${seeds[@]}" >>"$WORK/n$i.log" 2>&1 &
    PIDS[$i]=$!
}

# state HOST ADDR: "up", "down" or "" (not listed / status failed), as HOST sees ADDR.
state() {
    "$BIN" status --host "$1" 2>/dev/null | awk -v a="$2" '$2 == a { print $3 }' || true
}

# wait_all_see WANT...: until every node's status shows node i in state WANT[i].
wait_all_see() {
    local deadline=$(( $(now_ms) + WAIT_LIMIT_S * 1000 ))
    while :; do
        local ok=1
        for host in 0 1 2; do
            for node in 0 1 2; do
                if [ "$(state "$(addr_of $host)" "$(addr_of $node)")" != "up" ]; then ok=0; break 2; fi
            done
        done
        if [ $ok = 1 ]; then return 0; fi
        if [ "$(now_ms)" -ge $deadline ]; then echo "cluster not all up after ${WAIT_LIMIT_S}s" >&2; exit 1; fi
        sleep $POLL_S
    done
}

# time_until WANT START_MS: ms from START_MS until both survivors show node 2 as WANT.
time_until() {
    local want=$1 start=$2 seen0="" seen1=""
    local deadline=$(( start + WAIT_LIMIT_S * 1000 )) victim
    victim=$(addr_of 2)
    local ready=""
    [ "$want" = up ] || ready=0
    while :; do
        if [ -z "$ready" ] && "$BIN" status --host "$victim" >/dev/null 2>&1; then ready=$(( $(now_ms) - start )); fi
        if [ -z "$seen0" ] && [ "$(state "$(addr_of 0)" "$victim")" = "$want" ]; then seen0=$(now_ms); fi
        if [ -z "$seen1" ] && [ "$(state "$(addr_of 1)" "$victim")" = "$want" ]; then seen1=$(now_ms); fi
        if [ -n "$seen0" ] && [ -n "$seen1" ] && [ -n "$ready" ]; then
            echo "$ready" >"$WORK/ready_ms"
            echo $(( (seen0 > seen1 ? seen0 : seen1) - start ))
            return 0
        fi
        if [ "$(now_ms)" -ge $deadline ]; then echo "node 3 not $want on both survivors after ${WAIT_LIMIT_S}s" >&2; exit 1; fi
        sleep $POLL_S
    done
}

# p50 (nearest rank) and max of the arguments.
summary() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { r = int((NR + 1) / 2); printf "p50 %d ms, max %d ms", v[r], v[NR] }'
}

echo "ringkv failure detection bench: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $TRIALS trials, phi_convict_threshold $PHI, $(nproc) cores"
for interval in $INTERVALS; do
    rm -rf "$WORK"/n*
    for i in 0 1 2; do start_node "$i" "$interval"; done
    wait_all_see
    detect=() recover=() readies=()
    for trial in $(seq 1 "$TRIALS"); do
        sleep "$(awk -v i="$interval" -v n=$SETTLE_INTERVALS 'BEGIN { print i * n / 1000 }')"
        start=$(now_ms)
        kill -9 "${PIDS[2]}"
        wait "${PIDS[2]}" 2>/dev/null || true
        PIDS[2]=""
        d=$(time_until down "$start")
        start=$(now_ms)
        start_node 2 "$interval"
        r=$(time_until up "$start")
        ready=$(cat "$WORK/ready_ms")
        detect+=("$d") recover+=("$r") readies+=("$ready")
        printf 'gossip_interval_ms %5d  trial %2d  detection %6d ms  recovery %6d ms  (restarted node answering after %5d ms)\n' \
            "$interval" "$trial" "$d" "$r" "$ready"
        wait_all_see
    done
    printf 'gossip_interval_ms %5d  detection: %s;  recovery: %s;  restarted node answering: %s\n' \
        "$interval" "$(summary "${detect[@]}")" "$(summary "${recover[@]}")" "$(summary "${readies[@]}")"
    for i in 0 1 2; do
        kill -9 "${PIDS[$i]}" 2>/dev/null || true
        wait "${PIDS[$i]}" 2>/dev/null || true
        PIDS[$i]=""
    done
done
