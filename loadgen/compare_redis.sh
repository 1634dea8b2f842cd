#!/usr/bin/env bash
# compare_redis.sh — single-node ringkv vs Redis, same machine, same run (docs/design.md
# §9.3).
#
# Starts a local redis-server and a local `ringkv serve` (one shard), each on a free port,
# servers pinned to CPU 0 and load generators to CPU 1 (taskset), then drives Redis with
# redis-benchmark and ringkv with ringkv-loadgen using the same value size, key space,
# connection count, pipeline depth and request count, and prints one side-by-side table.
#
#   --mode get            GET of keys loaded beforehand; Redis without AOF
#   --mode put-batch      SET/put; Redis appendfsync always  vs ringkv commitlog_sync batch
#   --mode put-periodic   SET/put; Redis appendfsync everysec vs ringkv commitlog_sync periodic
#
# Options (defaults in brackets):
#   --keys N [100000]  --value-size B [100]  --connections C [50]  --pipeline P [1]
#   --requests N [1000000]  --redis-only (skip ringkv; useful before the client exists)
#   --keep (keep the temp dir with logs and JSON)
# Binaries: $RINGKV_BIN [target/release/ringkv], $LOADGEN_BIN [target/release/ringkv-loadgen];
# built with `cargo build --release` when missing.
#
# Honesty notes, printed with the table: each side's numbers are measured by its own
# client (redis-benchmark, C; ringkv-loadgen, glommio), both closed loop with the same
# C×P requests in flight; latencies are per request, in milliseconds; ops/s counts
# completed requests over each tool's measured time. Key names have the same length
# (16 bytes: key:%012d vs user%012d); keys are drawn uniformly from 0..N-1 by both.
set -euo pipefail

MODE=get
KEYS=100000
VALUE_SIZE=100
CONNECTIONS=50
PIPELINE=1
REQUESTS=1000000
REDIS_ONLY=0
KEEP=0

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --value-size) VALUE_SIZE=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --pipeline) PIPELINE=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    --redis-only) REDIS_ONLY=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    *) echo "compare_redis.sh: unknown argument $1" >&2; usage ;;
  esac
done

case "$MODE" in
  get)          REDIS_PERSIST=(--appendonly no);                          RINGKV_SYNC=();                          REDIS_TEST=get; READ_RATIO=1 ;;
  put-batch)    REDIS_PERSIST=(--appendonly yes --appendfsync always);    RINGKV_SYNC=();                          REDIS_TEST=set; READ_RATIO=0 ;;
  put-periodic) REDIS_PERSIST=(--appendonly yes --appendfsync everysec);  RINGKV_SYNC=(--commitlog-sync periodic);  REDIS_TEST=set; READ_RATIO=0 ;;
  *) echo "compare_redis.sh: --mode must be get, put-batch or put-periodic" >&2; exit 2 ;;
esac
for n in "$KEYS" "$VALUE_SIZE" "$CONNECTIONS" "$PIPELINE" "$REQUESTS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "compare_redis.sh: $n is not a positive integer" >&2; exit 2; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
RINGKV_BIN=${RINGKV_BIN:-$REPO/target/release/ringkv}
LOADGEN_BIN=${LOADGEN_BIN:-$REPO/target/release/ringkv-loadgen}

# --- tools ----------------------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools from Debian..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d-less containers: do not let the package start its own service.
  RUNLEVEL=1 $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
command -v python3 >/dev/null || { echo "compare_redis.sh: python3 is needed to parse results" >&2; exit 3; }
if [ "$REDIS_ONLY" -eq 0 ] && { [ ! -x "$RINGKV_BIN" ] || [ ! -x "$LOADGEN_BIN" ]; }; then
  echo "building ringkv and ringkv-loadgen (release)..." >&2
  (cd "$REPO" && cargo build --release -p ringkv -p ringkv-loadgen)
fi

# --- pinning --------------------------------------------------------------------------
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  SERVER_PIN=(taskset -c 0); LOAD_PIN=(taskset -c 1); PINNING="server on CPU 0, load generator on CPU 1"
else
  SERVER_PIN=(); LOAD_PIN=(); PINNING="NOT pinned (needs taskset and 2 CPUs)"
fi

# --- scratch, cleanup -----------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare_redis.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$KEEP" -eq 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A port whose successor is free too: ringkv's shard 0 listens on client port + 1, and a
# kernel-chosen port's neighbour may be taken (the likely cause of one run that found
# nothing listening; not confirmed).
free_port_pair() {
  python3 - <<'PY'
import socket
for _ in range(100):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 1))
    except OSError:
        a.close(); b.close(); continue
    a.close(); b.close(); print(port); break
PY
}

# Wait until something accepts TCP connections on 127.0.0.1:$1 (deadline 20 s).
wait_port() {
  local port=$1 deadline=$((SECONDS + 20))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "compare_redis.sh: nothing listening on port $port after 20 s" >&2; return 1; }
    sleep 0.1
  done
}

# --- Redis ----------------------------------------------------------------------------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
"${SERVER_PIN[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" \
  --save '' "${REDIS_PERSIST[@]}" --daemonize no --logfile "$WORK/redis/redis.log" &
PIDS+=($!)
wait_port "$REDIS_PORT"
until [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done

if [ "$MODE" = get ]; then
  # Load keys key:000000000000 .. key:%012d(N-1), the names redis-benchmark -r N uses.
  python3 - "$KEYS" "$VALUE_SIZE" >"$WORK/redis/load.resp" <<'EOF'
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
value = b"x" * size
out = sys.stdout.buffer
for i in range(keys):
    k = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, size, value))
EOF
  redis-cli -p "$REDIS_PORT" --pipe <"$WORK/redis/load.resp" >"$WORK/redis/load.log"
  loaded=$(redis-cli -p "$REDIS_PORT" dbsize)
  [ "$loaded" -eq "$KEYS" ] || { echo "compare_redis.sh: Redis holds $loaded keys, expected $KEYS" >&2; exit 3; }
fi

"${LOAD_PIN[@]}" redis-benchmark -p "$REDIS_PORT" -t "$REDIS_TEST" -r "$KEYS" -d "$VALUE_SIZE" \
  -c "$CONNECTIONS" -P "$PIPELINE" -n "$REQUESTS" --csv >"$WORK/redis/bench.csv" 2>"$WORK/redis/bench.err"

# test,rps,avg,min,p50,p95,p99,max (Redis ≥ 7); older versions lack the latency columns.
read -r REDIS_OPS REDIS_P50 REDIS_P99 < <(python3 - "$WORK/redis/bench.csv" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
if not rows:
    sys.exit("redis-benchmark produced no result")
r = rows[-1]
print(r["rps"], r.get("p50_latency_ms", "n/a"), r.get("p99_latency_ms", "n/a"))
EOF
)

# --- ringkv ---------------------------------------------------------------------------
RINGKV_OPS=n/a; RINGKV_P50=n/a; RINGKV_P99=n/a; RINGKV_NOTE=""
if [ "$REDIS_ONLY" -eq 0 ]; then
  RINGKV_PORT=$(free_port_pair)
  mkdir -p "$WORK/ringkv"
  ulimit -l unlimited 2>/dev/null || true # glommio registers locked I/O memory
  "${SERVER_PIN[@]}" "$RINGKV_BIN" serve --data-dir "$WORK/ringkv/data" \
    --listen "127.0.0.1:$RINGKV_PORT" --shards 1 "${RINGKV_SYNC[@]}" \
    >"$WORK/ringkv/serve.log" 2>&1 &
  PIDS+=($!)
  wait_port "$RINGKV_PORT" || { tail -5 "$WORK/ringkv/serve.log" >&2; exit 1; }

  LOAD_ARGS=()
  [ "$MODE" = get ] && LOAD_ARGS=(--load "$KEYS")
  # Same closed loop as redis-benchmark: C connections × P in flight, N requests, no
  # warmup (redis-benchmark has none), uniform keys over the same key space.
  set +e
  "${LOAD_PIN[@]}" "$LOADGEN_BIN" --hosts "127.0.0.1:$RINGKV_PORT" --workload custom \
    --read-ratio "$READ_RATIO" --distribution uniform --keys "$KEYS" --value-size "$VALUE_SIZE" \
    --connections "$CONNECTIONS" --pipeline "$PIPELINE" --threads 1 --ops "$REQUESTS" \
    --warmup 0s "${LOAD_ARGS[@]}" --json "$WORK/ringkv/loadgen.json" \
    >"$WORK/ringkv/loadgen.out" 2>"$WORK/ringkv/loadgen.err"
  rc=$?
  set -e
  if [ $rc -ne 0 ]; then
    echo "compare_redis.sh: ringkv-loadgen exited $rc:" >&2
    tail -5 "$WORK/ringkv/loadgen.err" >&2
    exit 3
  fi
  read -r RINGKV_OPS RINGKV_P50 RINGKV_P99 RINGKV_NOTE < <(python3 - "$WORK/ringkv/loadgen.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["total"]
errors = sum(t["errors"].values())
note = f"errors={errors}" if errors else ""
print(f'{t["ops_per_second"]:.2f}', f'{t["raw"]["p50_us"] / 1000:.3f}', f'{t["raw"]["p99_us"] / 1000:.3f}', note)
EOF
)
fi

# --- table ----------------------------------------------------------------------------
python3 - "$MODE" "$KEYS" "$VALUE_SIZE" "$CONNECTIONS" "$PIPELINE" "$REQUESTS" "$PINNING" \
  "$REDIS_OPS" "$REDIS_P50" "$REDIS_P99" "$RINGKV_OPS" "$RINGKV_P50" "$RINGKV_P99" "$RINGKV_NOTE" \
  "$(redis-server --version | sed 's/ sha=.*//')" <<'EOF'
import sys
(mode, keys, size, conns, pipe, reqs, pinning, r_ops, r_p50, r_p99,
 k_ops, k_p50, k_p99, k_note, redis_version) = sys.argv[1:16]
persist = {"get": "Redis: no AOF; ringkv: default (batch)",
           "put-batch": "Redis: appendfsync always; ringkv: commitlog_sync batch",
           "put-periodic": "Redis: appendfsync everysec; ringkv: commitlog_sync periodic"}[mode]
print(f"mode {mode}: {keys} keys, {size} B values, {conns} connections x pipeline {pipe}, "
      f"{reqs} requests each, uniform keys, closed loop; {pinning}")
print(f"durability: {persist}; {redis_version}")
def num(s):
    try:
        return float(s)
    except ValueError:
        return None
def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.2f}x" if a is not None and b not in (None, 0.0) else "n/a"
print(f"{'':<26}{'ops/s':>14}{'p50 ms':>10}{'p99 ms':>10}")
print(f"{'redis (redis-benchmark)':<26}{r_ops:>14}{r_p50:>10}{r_p99:>10}")
print(f"{'ringkv (ringkv-loadgen)':<26}{k_ops:>14}{k_p50:>10}{k_p99:>10}  {k_note}")
print(f"{'ringkv / redis':<26}{ratio(k_ops, r_ops):>14}{ratio(k_p50, r_p50):>10}{ratio(k_p99, r_p99):>10}")
print("each side measured by its own client; latency per request in ms; "
      "ops/s = completed requests / that tool's measured time")
EOF
