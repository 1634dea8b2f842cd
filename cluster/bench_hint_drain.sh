#!/usr/bin/env bash
# Hinted-handoff drain benchmark: five release `ringkv serve` nodes on this machine
# (RF=3), one node cut off both ways for CUT_SECONDS through the test-only fault rules
# while `ringkv-loadgen` writes at W=2 through the other four; then the cut is healed and
# the time until every node's `ringkv_hints_pending` for it reaches 0 is measured. RUNS
# runs, each on a fresh cluster; prints per run and p50/max of the drain time, the hints
# pending at the heal and the hints replayed (`ringkv_hints_delivered_total`).
#
#   cluster/bench_hint_drain.sh                 # 5 runs, 30 s cut, 2000 writes/s
#   RUNS=5 CUT_SECONDS=30 RATE=2000 SHARDS=1 HINT_REPLAY_RATE=10000 BUILD=1 PORT_BASE=17400
#
# Drain time runs from the moment the rules are removed (it includes the failure
# detector noticing the node is back) to the first poll (every 50 ms) that sees no
# pending hint anywhere. `hint_replay_rate` (per shard per second) bounds it: each holder
# shard sends at most that many replays a second.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${RUNS:-5}"
cut_s="${CUT_SECONDS:-30}"
rate="${RATE:-2000}"
shards="${SHARDS:-1}"
replay_rate="${HINT_REPLAY_RATE:-10000}"
port_base="${PORT_BASE:-17400}"

bin="$PWD/target/release/ringkv"
loadgen="$PWD/target/release/ringkv-loadgen"
# shellcheck source=cluster/lib.sh
source "$PWD/cluster/lib.sh"
bench_setup ringkv-hint-drain
metrics_addr() { echo "127.0.0.1:$((port_base + $1 * 10 + 9))"; }

# Sum of one metric over every node (all shards, all targets).
metric_sum() {
    local name="$1" total=0 i v
    for i in 0 1 2 3 4; do
        v="$(curl -s --max-time 2 "http://$(metrics_addr "$i")/metrics" |
            awk -v n="$name" 'index($0, n "{") == 1 { s += $NF } END { printf "%d", s }')"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

now_ms() { date +%s%3N; }

drains=()
results=()
for run in $(seq 1 "$runs"); do
    dir="$work/run$run"
    mkdir -p "$dir"
    for i in 0 1 2 3 4; do
        : >"$dir/node$i.rules"
        seeds=()
        [ "$i" -gt 0 ] && seeds=(--seeds "$(addr 0)")
        "$bin" serve --listen "$(addr "$i")" --shards "$shards" --data-dir "$dir/data$i" \
            --replication-factor 3 --cluster-secret bench-hint-drain \
            --hint-replay-rate "$replay_rate" --metrics-listen "$(metrics_addr "$i")" \
            --fault-rules-file "$dir/node$i.rules" "${seeds[@]}" 2>"$dir/node$i.log" &
        pids+=($!)
    done
    deadline=$(($(date +%s) + 120))
    until "$bin" status --host "$(addr 0)" 2>/dev/null | grep -q '^5 nodes (5 up'; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "run $run: cluster not up" >&2; exit 1; }
        sleep 0.2
    done

    cut="$(addr 4)"
    hosts="$(addr 0),$(addr 1),$(addr 2),$(addr 3)"
    "$loadgen" --hosts "$hosts" --read-ratio 0 --distribution uniform --keys 1000000 \
        --consistency two --rate "$rate" --connections 4 --pipeline 4 --warmup 0s \
        --duration "$((cut_s + 2))s" --json "$dir/load.json" >"$dir/load.out" 2>"$dir/load.err" &
    load_pid=$!
    pids+=("$load_pid")
    sleep 2
    echo "cut *" >"$dir/node4.rules"
    for i in 0 1 2 3; do echo "cut $cut" >"$dir/node$i.rules"; done
    wait "$load_pid" || true

    pending_at_heal="$(metric_sum ringkv_hints_pending)"
    delivered_before="$(metric_sum ringkv_hints_delivered_total)"
    for i in 0 1 2 3 4; do : >"$dir/node$i.rules"; done
    healed="$(now_ms)"
    deadline=$(($(date +%s) + 300))
    while [ "$(metric_sum ringkv_hints_pending)" -gt 0 ]; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "run $run: hints did not drain" >&2; exit 1; }
        sleep 0.05
    done
    drain_ms=$(($(now_ms) - healed))
    replayed=$(($(metric_sum ringkv_hints_delivered_total) - delivered_before))
    writes="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["total"]["count"])' "$dir/load.json" 2>/dev/null || echo "?")"
    line="run $run: ${writes} writes acked, ${pending_at_heal} hints pending at heal, drained in ${drain_ms} ms, ${replayed} replayed"
    echo "$line"
    results+=("$line")
    drains+=("$drain_ms")
    cleanup
done

sorted=($(printf '%s\n' "${drains[@]}" | sort -n))
p50="${sorted[$(((${#sorted[@]} - 1) / 2))]}"
max="${sorted[${#sorted[@]} - 1]}"
echo "hint drain after a ${cut_s} s cut at ${rate} writes/s (W=2, RF=3, 5 nodes x ${shards} shard(s), hint_replay_rate ${replay_rate}/s per shard): p50 ${p50} ms, max ${max} ms over ${runs} runs"
