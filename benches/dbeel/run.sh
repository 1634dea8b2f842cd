#!/usr/bin/env bash
# Three-node dbeel 0.1.0 cluster (RF=3, QUORUM) on this machine, measured with
# ringkv-dbeel-bench in the shape of cluster/bench_quorum.sh: 100,000 keys, 20,000
# loaded, 100-byte values, 50 % gets / 50 % sets, closed loop of CONCURRENCY requests.
#
#   benches/dbeel/run.sh
#   WAL_SYNC=1 CONCURRENCY=64 DURATION_S=10 WARMUP_S=2 NODE_CPUS="0 1 0" LOADGEN_CPU=1 \
#   PORT_BASE=18100 benches/dbeel/run.sh
#
# Node i runs under `taskset -c` of the i-th entry of NODE_CPUS (dbeel then pins its own
# shard threads with glommio Placement::Fixed, one per online CPU; the script prints
# where the threads really are). Ports of node i: clients PORT_BASE+10i (+shard id),
# remote shards PORT_BASE+100+10i, gossip PORT_BASE+200+10i. WAL_SYNC=1 adds --wal-sync
# (fdatasync after every WAL write; dbeel's default is no fdatasync). Prints the client's
# table, then server / load generator / machine CPU per operation over the measured
# window (utime+stime from /proc, busy ticks from /proc/stat, as bench_quorum.sh).
# BUILD=0 skips installing dbeel and building the client; KEEP_WORK=1 keeps the data
# directories and logs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
# machine_ticks and cpu_ticks (this script keeps its own cleanup, defined below).
# shellcheck source=cluster/lib.sh
source "$here/../../cluster/lib.sh"

wal_sync="${WAL_SYNC:-0}"
concurrency="${CONCURRENCY:-32}"
duration_s="${DURATION_S:-10}"
warmup_s="${WARMUP_S:-2}"
port_base="${PORT_BASE:-18100}"
read -r -a node_cpus <<< "${NODE_CPUS:-0 1 0}"
loadgen_cpu="${LOADGEN_CPU:-1}"
dbeel="$here/target/dbeel/bin/dbeel"
bench="$here/target/release/ringkv-dbeel-bench"

if [ "${BUILD:-1}" = 1 ]; then
    if [ ! -x "$dbeel" ]; then
        cargo install dbeel --version =0.1.0 --locked --root "$here/target/dbeel" -j 2
    fi
    cargo build --release -j 2 --manifest-path "$here/Cargo.toml"
fi

work="$(mktemp -d /tmp/dbeel-bench.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2> /dev/null || true
    done
    pids=()
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "# work dir kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

db_port() { echo $((port_base + 10 * $1)); }
shard_port() { echo $((port_base + 100 + 10 * $1)); }
gossip_port() { echo $((port_base + 200 + 10 * $1)); }
answers() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

show_logs() {
    local i
    for i in 0 1 2; do
        [ -f "$work/node$i.log" ] || continue
        echo "--- node$i.log: $(grep -c -E 'ERROR|panicked' "$work/node$i.log" || true) error lines; first 10, last 10 lines:" >&2
        grep -E 'ERROR|WARN|panicked' "$work/node$i.log" | head -10 >&2 || true
        tail -10 "$work/node$i.log" >&2
    done
}

for i in 0 1 2; do
    for port in "$(db_port "$i")" "$(shard_port "$i")"; do
        if answers "$port"; then
            echo "something already answers on 127.0.0.1:$port; stop it or set PORT_BASE" >&2
            exit 1
        fi
    done
done

sync_flag=()
[ "$wal_sync" = 1 ] && sync_flag=(--wal-sync)
hosts=""
for i in 0 1 2; do
    seeds=()
    [ "$i" -gt 0 ] && seeds=(--seed-nodes "127.0.0.1:$(shard_port 0)")
    taskset -c "${node_cpus[$i]}" "$dbeel" --name "n$i" --ip 127.0.0.1 \
        --port "$(db_port "$i")" --remote-shard-port "$(shard_port "$i")" \
        --gossip-port "$(gossip_port "$i")" --dir "$work/n$i" \
        --default-replication-factor 3 "${seeds[@]}" "${sync_flag[@]}" \
        > "$work/node$i.log" 2>&1 &
    pids+=($!)
    hosts="${hosts:+$hosts,}127.0.0.1:$(db_port "$i")"
    # A node learns the others from its seed's metadata at start, so each one starts
    # only once every running shard lists all nodes started so far.
    if ! "$bench" --wait-only --nodes $((i + 1)) --hosts "$hosts" --setup-timeout-s 30 \
        > "$work/wait.out" 2>&1; then
        cat "$work/wait.out" >&2
        show_logs
        exit 1
    fi
done
grep '^# ring' "$work/wait.out"

echo "# $(date -u +%FT%TZ); load average $(cat /proc/loadavg); nodes on CPUs ${node_cpus[*]}," \
    "load generator on CPU $loadgen_cpu; wal-sync $wal_sync; concurrency $concurrency"
# Bounded in time whatever dbeel does: a node that stops answering (see README,
# "Problems seen") would otherwise hold the client in 20 s request timeouts.
timeout --kill-after=5 $((warmup_s + duration_s + 120)) taskset -c "$loadgen_cpu" "$bench" --hosts "$hosts" --nodes 3 --replication-factor 3 \
    --consistency quorum --keys 100000 --load 20000 --value-size 100 \
    --concurrency "$concurrency" --duration "$duration_s" --warmup "$warmup_s" \
    > "$work/bench.out" 2>&1 &
lg=$!

# Sample CPU over the measured window: from the client's "# measuring" line on.
deadline=$((SECONDS + 120))
until grep -q '^# measuring' "$work/bench.out"; do
    if ! kill -0 "$lg" 2> /dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        break
    fi
    sleep 0.1
done
sample_s=$((duration_s > 7 ? 6 : duration_s - 1))
# The client is timeout's child (taskset execs into it): sample it by its own PID.
client="$(pgrep -P "$lg" | head -1 || true)"
if grep -q '^# measuring' "$work/bench.out" && [ "$sample_s" -ge 1 ] && [ -n "$client" ]; then
    m0="$(machine_ticks)"
    s0="$(cpu_ticks "${pids[@]}")"; l0="$(cpu_ticks "$client")"; t0="$(date +%s%N)"
    sleep "$sample_s"
    s1="$(cpu_ticks "${pids[@]}")"; l1="$(cpu_ticks "$client")"; t1="$(date +%s%N)"
    m1="$(machine_ticks)"
    echo "# dbeel threads (psr = CPU last run on, then allowed CPUs):"
    for pid in "${pids[@]}"; do
        ps -L -o pid=,tid=,psr=,comm= -p "$pid" | while read -r p tid psr comm; do
            echo "#   pid $p tid $tid psr $psr $comm allowed $(taskset -pc "$tid" | sed 's/.*: //')"
        done
    done
    echo "#   load generator pid $client psr $(ps -o psr= -p "$client" | tr -d ' ') allowed $(taskset -pc "$client" | sed 's/.*: //')"
fi
status=0
wait "$lg" || status=$?
grep -v '^# measuring' "$work/bench.out" || true
if [ -n "${s0:-}" ]; then
    line="$(grep -E '^all ' "$work/bench.out" || true)"
    if [ -n "$line" ]; then
        awk -v line="$line" -v ds="$((s1 - s0))" -v dl="$((l1 - l0))" -v dt="$((t1 - t0))" \
            -v dm="$((m1 - m0))" -v hz="$(getconf CLK_TCK)" 'BEGIN {
            split(line, f, " ")
            ops = f[3]; secs = dt / 1e9
            printf "# CPU per op over %.1f s: server %.1f us, load generator %.1f us, machine %.1f us\n",
                secs, (ds / hz / secs) * 1e6 / ops, (dl / hz / secs) * 1e6 / ops,
                (dm / hz / secs) * 1e6 / ops
        }'
    fi
fi
for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2> /dev/null; then
        echo "dbeel node pid $pid exited during the run" >&2
        status=1
    fi
done
# The client's get_collection probe logs one CollectionNotFound on a shard that has not
# yet heard of the new collection; that is the wait working, not a failure.
errs="$(cat "$work"/node*.log | grep -E 'ERROR|panicked' | grep -c -v 'CollectionNotFound' || true)"
echo "# dbeel log error lines (besides the collection probe): $errs"
if [ "$status" != 0 ] || [ "$errs" != 0 ]; then
    show_logs
fi
exit "$status"
