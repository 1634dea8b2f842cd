#!/usr/bin/env bash
# Three-node quorum benchmark (docs/benchmarks.md "Three nodes, RF=3, QUORUM"): three
# release `ringkv serve` nodes on this machine (RF=3, one shard each), `ringkv-loadgen`
# running YCSB A (50 % reads, 50 % updates, 100-byte values, 100,000 keys, 20,000 loaded)
# at QUORUM/QUORUM, token-aware across the three nodes. Each run starts a fresh cluster,
# prints one row: the load shape, the commit-log mode, throughput, p50/p99/p99.9 of all
# operations, and the CPU the servers and the load generator spent per operation
# (utime + stime from /proc over a 6 s window of the measured phase), and the whole
# machine's busy CPU per operation over the same window (/proc/stat: everything but
# idle and iowait, so it includes the kernel's workqueues, e.g. the disk's completion
# and cache-flush work, which no process is charged for). Several binaries
# can be compared in one session: rows alternate between them, round by round.
#
#   cluster/bench_quorum.sh                     # 2 rounds of 1x32 in periodic and batch
#   ROUNDS=2 SHAPES="1x32 8x4" MODES="periodic batch" NODE_CPUS="0 1 0" LOADGEN_CPU=1 \
#   BINS="target/release /tmp/base" BUILD=1 PORT_BASE=17500 cluster/bench_quorum.sh
#
# NODE_CPUS pins node i to the i-th CPU list (taskset -c), LOADGEN_CPU the load
# generator. A directory in BINS must hold `ringkv` and `ringkv-loadgen`. MIX replaces
# the operation mix (default "--workload a"; the dbeel comparison in benches/dbeel uses
# MIX="--workload custom --read-ratio 0.5 --distribution uniform", as its client does).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${ROUNDS:-2}"
shapes="${SHAPES:-1x32}"
modes="${MODES:-periodic batch}"
read -r -a node_cpus <<< "${NODE_CPUS:-0 1 0}"
loadgen_cpu="${LOADGEN_CPU:-1}"
bins="${BINS:-target/release}"
port_base="${PORT_BASE:-17500}"
duration_s="${DURATION_S:-10}"
read -r -a mix <<< "${MIX:---workload a}"
if [ "$duration_s" -lt 10 ]; then
    # The CPU window is seconds 5-11 of the load generator's life (load, warmup, run).
    echo "DURATION_S must be at least 10 (the CPU sample ends 11 s after the start)" >&2
    exit 2
fi

# shellcheck source=cluster/lib.sh
source "$PWD/cluster/lib.sh"
bench_setup ringkv-bench-quorum

run_one() { # bin_dir shape mode
    local bin="$1" shape="$2" mode="$3" conns pipeline i data
    conns="${shape%x*}"
    pipeline="${shape#*x}"
    data="$work/run"
    rm -rf "$data"
    if "$bin/ringkv" status --host "$(addr 0)" > /dev/null 2>&1; then
        echo "something already answers on $(addr 0); stop it or set PORT_BASE" >&2
        exit 1
    fi
    local flags=(--gossip-interval-ms 200 --replication-factor 3 --cluster-secret bench-secret
        --shards 1 --commitlog-sync "$mode")
    for i in 0 1 2; do
        local seeds=()
        [ "$i" -gt 0 ] && seeds=(--seeds "$(addr 0)")
        taskset -c "${node_cpus[$i]}" "$bin/ringkv" serve --listen "$(addr "$i")" \
            --data-dir "$data/n$i" "${seeds[@]}" "${flags[@]}" > "$work/node$i.log" 2>&1 &
        pids+=($!)
        [ "$i" -eq 0 ] && sleep 0.5
    done
    local deadline=$((SECONDS + 30))
    until [ "$("$bin/ringkv" status --host "$(addr 0)" 2>/dev/null | grep -c ' up ')" = 3 ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "cluster did not come up; node logs in $work" >&2
            exit 1
        fi
        sleep 0.2
    done
    taskset -c "$loadgen_cpu" "$bin/ringkv-loadgen" --hosts "$(addr 0)" "${mix[@]}" \
        --keys 100000 --load 20000 --value-size 100 --consistency quorum \
        --connections "$conns" --pipeline "$pipeline" --duration "${duration_s}s" --warmup 2s \
        > "$work/loadgen.out" 2>&1 &
    local lg=$!
    # The measured phase starts after the load (about 1 s) and the 2 s warmup.
    sleep 5
    local s0 l0 t0 s1 l1 t1 m0 m1
    m0="$(machine_ticks)"
    s0="$(cpu_ticks "${pids[@]}")"; l0="$(cpu_ticks "$lg")"; t0="$(date +%s%N)"
    sleep 6
    s1="$(cpu_ticks "${pids[@]}")"; l1="$(cpu_ticks "$lg")"; t1="$(date +%s%N)"
    m1="$(machine_ticks)"
    wait "$lg"
    local line
    line="$(grep -E '^all ' "$work/loadgen.out")"
    cleanup
    awk -v bin="$bin" -v shape="$shape" -v mode="$mode" -v line="$line" \
        -v ds="$((s1 - s0))" -v dl="$((l1 - l0))" -v dt="$((t1 - t0))" -v dm="$((m1 - m0))" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(line, f, " ")
        ops = f[3]; secs = dt / 1e9
        printf "| %s | %s | %s | %.0f | %s / %s / %s | %.1f | %.1f | %.1f |\n", bin, shape, mode,
            ops, f[4], f[6], f[7], (ds / hz / secs) * 1e6 / ops, (dl / hz / secs) * 1e6 / ops,
            (dm / hz / secs) * 1e6 / ops
    }'
}

echo "nodes on CPUs ${node_cpus[*]}, load generator on CPU $loadgen_cpu; $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| build | C x P | commit log | ops/s | p50 / p99 / p99.9 ms | server CPU us/op | loadgen CPU us/op | machine CPU us/op |"
echo "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"
for round in $(seq 1 "$rounds"); do
    for shape in $shapes; do
        for mode in $modes; do
            for bin in $bins; do
                run_one "$bin" "$shape" "$mode"
            done
        done
    done
done
