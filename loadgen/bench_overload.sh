#!/usr/bin/env bash
# bench_overload.sh — one node under growing overload: capacity first, then far more
# requests in flight than the shard admits, then the memory it keeps afterwards.
#
# Starts `ringkv serve` (SHARDS shards, batch mode) pinned to CPU 0 and ringkv-loadgen
# pinned to CPU 1, loads KEYS keys, then runs a 50/50 uniform read/update mix for
# DURATION at each connections×pipeline shape of SHAPES. The first shape measures
# capacity; for each shape it prints the successful ops/s (and its ratio to the first
# shape), the `Overloaded` answers per second, the p99 of the successful operations,
# and the server's RSS at the end of the run. After the last shape it waits for the
# connections to close and prints the RSS the node keeps.
#
#   loadgen/bench_overload.sh
#   SHAPES="50x8 2000x16 4000x16" DURATION=20s SHARDS=1 KEYS=100000 BUILD=1 PORT=17800
#   SERVE_ARGS="--max-inflight-per-shard 4096"   (extra flags for `ringkv serve`)
#
# The load generator keeps every connection's pipeline full: an `Overloaded` answer is
# counted and the slot sends its next request at once (a closed loop, the harshest
# client for a shedding server).
set -euo pipefail
cd "$(dirname "$0")/.."

shapes="${SHAPES:-50x8 2000x16 4000x16}"
duration="${DURATION:-20s}"
shards="${SHARDS:-1}"
keys="${KEYS:-100000}"
port="${PORT:-17800}"
bin="$PWD/target/release/ringkv"
loadgen="$PWD/target/release/ringkv-loadgen"
[ "${BUILD:-1}" = 1 ] && cargo build --release --workspace --quiet

work="$(mktemp -d "${TMPDIR:-/tmp}/ringkv-overload.XXXXXX")"
server=""
trap '[ -n "$server" ] && kill -KILL "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
ulimit -n 65536 2>/dev/null || echo "warning: cannot raise the open-file limit ($(ulimit -n))" >&2

rss_mib() { awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$1/status"; }

# shellcheck disable=SC2086 # SERVE_ARGS is a list of flags
taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --shards "$shards" --data-dir "$work/data" \
    ${SERVE_ARGS:-} >"$work/serve.log" 2>&1 &
server=$!
deadline=$(($(date +%s) + 30))
until "$bin" status --host "127.0.0.1:$port" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "node did not start" >&2; tail -5 "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
taskset -c 1 "$loadgen" --hosts "127.0.0.1:$port" --load "$keys" --keys "$keys" --ops 1 \
    --warmup 0s >/dev/null 2>&1
echo "rss after load: $(rss_mib "$server") MiB"

capacity=""
printf '%-10s %12s %8s %14s %10s %10s\n' shape "ok ops/s" "x cap" "overloaded/s" "p99 ms" "rss MiB"
for shape in $shapes; do
    c="${shape%x*}"
    p="${shape#*x}"
    json="$work/$shape.json"
    taskset -c 1 "$loadgen" --hosts "127.0.0.1:$port" --workload custom --read-ratio 0.5 \
        --distribution uniform --keys "$keys" --connections "$c" --pipeline "$p" \
        --duration "$duration" --warmup 2s --json "$json" >"$work/$shape.out" 2>&1 || true
    rss="$(rss_mib "$server")"
    read -r ok overloaded p99 < <(python3 - "$json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["total"]
secs = r["measured_seconds"]
over = t["errors"].get("overloaded", 0)
print(f"{t['ops_per_second']:.0f} {over / secs:.0f} {t['raw']['p99_us'] / 1000:.2f}")
EOF
)
    [ -z "$capacity" ] && capacity="$ok"
    ratio="$(python3 -c "print(f'{$ok / $capacity:.2f}')")"
    printf '%-10s %12s %8s %14s %10s %10s\n' "$shape" "$ok" "$ratio" "$overloaded" "$p99" "$rss"
done
# The allocator returns freed memory as the shard keeps running: a little light load,
# then the RSS the node keeps.
for i in 1 2 3 4 5; do
    sleep 2
    taskset -c 1 "$loadgen" --hosts "127.0.0.1:$port" --keys "$keys" --connections 8 \
        --duration 1s --warmup 0s >/dev/null 2>&1 || true
    echo "rss $((i * 3)) s after the overload, under light load: $(rss_mib "$server") MiB"
done
