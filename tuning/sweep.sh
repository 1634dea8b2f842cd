#!/usr/bin/env bash
# sweep.sh — run ringkv-loadgen over a grid of connections x pipeline depths.
#
# Every point is one loadgen run bounded by --duration (and by `timeout`, duration +
# grace, as a backstop). Traffic goes only to the --hosts given. Each point writes
# OUT/cC-pP.json (loadgen --json) and OUT/cC-pP.log; a summary table is printed at the end.
#
# Usage: sweep.sh [options] [-- extra loadgen args, e.g. --value-size 1024 --keys 100000]
#   --hosts H:P,...        servers to load           (SWEEP_HOSTS, default 127.0.0.1:7400)
#   --connections LIST     e.g. 1,4,16               (SWEEP_CONNECTIONS, default 1,4,16)
#   --pipeline LIST        e.g. 1,8,32               (SWEEP_PIPELINE, default 1,8,32)
#   --duration D           per point: 500ms, 10s, 2m (SWEEP_DURATION, default 10s)
#   --workload W           a|b|c|d|e|f|custom        (SWEEP_WORKLOAD, default a)
#   --rate OPS_PER_S       open loop at this rate    (SWEEP_RATE, default closed loop)
#   --cpus LIST            taskset CPU list for the load generator (SWEEP_CPUS, default none)
#   --out DIR              output directory          (SWEEP_OUT, default ./sweep-DATE)
#   --loadgen PATH         loadgen binary            (RINGKV_LOADGEN, default ringkv-loadgen)
#   --grace SECONDS        timeout slack per point   (SWEEP_GRACE, default 30)
#   --dry-run              print the commands, run nothing
# Pin the server elsewhere: e.g. server on CPUs 2-7, `sweep.sh --cpus 0-1`.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "sweep: $*" >&2; exit 2; }

hosts="${SWEEP_HOSTS:-127.0.0.1:7400}"
connections="${SWEEP_CONNECTIONS:-1,4,16}"
pipeline="${SWEEP_PIPELINE:-1,8,32}"
duration="${SWEEP_DURATION:-10s}"
workload="${SWEEP_WORKLOAD:-a}"
rate="${SWEEP_RATE:-}"
cpus="${SWEEP_CPUS:-}"
out="${SWEEP_OUT:-}"
loadgen="${RINGKV_LOADGEN:-ringkv-loadgen}"
grace="${SWEEP_GRACE:-30}"
dry_run=0
extra=()

need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) need "$@"; hosts="$2"; shift 2 ;;
        --connections) need "$@"; connections="$2"; shift 2 ;;
        --pipeline) need "$@"; pipeline="$2"; shift 2 ;;
        --duration) need "$@"; duration="$2"; shift 2 ;;
        --workload) need "$@"; workload="$2"; shift 2 ;;
        --rate) need "$@"; rate="$2"; shift 2 ;;
        --cpus) need "$@"; cpus="$2"; shift 2 ;;
        --out) need "$@"; out="$2"; shift 2 ;;
        --loadgen) need "$@"; loadgen="$2"; shift 2 ;;
        --grace) need "$@"; grace="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

# --- validation: bounded runs, only the given hosts -------------------------------------
for arg in ${extra[@]+"${extra[@]}"}; do
    case "$arg" in
        --hosts|--hosts=*|--duration|--duration=*|--ops|--ops=*|--json|--json=*)
            die "$arg is set by sweep.sh itself; do not pass it after --" ;;
    esac
done

IFS=, read -r -a host_list <<< "$hosts"
[ "${#host_list[@]}" -gt 0 ] || die "--hosts is empty"
for h in "${host_list[@]}"; do
    [[ "$h" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$ ]] || die "bad host '$h': expected HOST:PORT"
done

# duration -> whole seconds (rounded up), for the timeout backstop
if [[ "$duration" =~ ^([0-9]+)(ms|s|m|h)?$ ]]; then
    n="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in
        ms) duration_s=$(( (n + 999) / 1000 )) ;;
        m) duration_s=$(( n * 60 )) ;;
        h) duration_s=$(( n * 3600 )) ;;
        *) duration_s="$n" ;;
    esac
else
    die "bad --duration '$duration': expected e.g. 500ms, 10s, 2m"
fi
[ "$n" -gt 0 ] || die "--duration must be positive"
[[ "$grace" =~ ^[0-9]+$ ]] || die "bad --grace '$grace'"
[ -z "$rate" ] || [[ "$rate" =~ ^[0-9]+$ ]] || die "bad --rate '$rate': expected ops per second"

# check_ints NAME ITEM...: every item a positive integer, at least one item.
check_ints() {
    local name="$1" item
    shift
    [ $# -gt 0 ] || die "--$name is empty"
    for item in "$@"; do
        [[ "$item" =~ ^[1-9][0-9]*$ ]] || die "bad --$name item '$item': expected positive integers"
    done
}
IFS=, read -r -a conn_list <<< "$connections"
check_ints connections ${conn_list[@]+"${conn_list[@]}"}
IFS=, read -r -a pipe_list <<< "$pipeline"
check_ints pipeline ${pipe_list[@]+"${pipe_list[@]}"}

pin=()
if [ -n "$cpus" ]; then
    [[ "$cpus" =~ ^[0-9,-]+$ ]] || die "bad --cpus '$cpus': expected a CPU list like 0-1 or 0,2"
    command -v taskset >/dev/null 2>&1 || die "--cpus needs taskset (util-linux)"
    pin=(taskset -c "$cpus")
fi
backstop=()
if command -v timeout >/dev/null 2>&1; then
    backstop=(timeout --kill-after=5 "$(( duration_s + grace ))")
fi

[ -n "$out" ] || out="./sweep-$(date +%Y%m%d-%H%M%S)"
points=$(( ${#conn_list[@]} * ${#pipe_list[@]} ))
echo "sweep: $points points x $duration against $hosts${cpus:+ (loadgen on CPUs $cpus)}; output in $out"

if [ "$dry_run" -eq 0 ]; then
    command -v "$loadgen" >/dev/null 2>&1 || die "loadgen '$loadgen' not found (build it, or pass --loadgen PATH)"
    mkdir -p "$out"
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -n) $(uname -r)"
        echo "hosts: $hosts"
        echo "workload: $workload  duration: $duration  rate: ${rate:-closed loop}"
        echo "loadgen cpus: ${cpus:-not pinned}"
        echo "extra: ${extra[*]+"${extra[*]}"}"
    } > "$out/sweep.txt"
fi

results=()
for c in "${conn_list[@]}"; do
    for p in "${pipe_list[@]}"; do
        name="c$c-p$p"
        cmd=("$loadgen" --hosts "$hosts" --workload "$workload" --connections "$c"
             --pipeline "$p" --duration "$duration")
        [ -n "$rate" ] && cmd+=(--rate "$rate")
        cmd+=(--json "$out/$name.json" ${extra[@]+"${extra[@]}"})
        full=(${pin[@]+"${pin[@]}"} ${backstop[@]+"${backstop[@]}"} "${cmd[@]}")
        if [ "$dry_run" -eq 1 ]; then
            printf '%q ' "${full[@]}"; echo
            continue
        fi
        echo "sweep: $name ..."
        rc=0
        "${full[@]}" > "$out/$name.log" 2>&1 || rc=$?
        [ "$rc" -eq 0 ] || echo "sweep: $name failed with exit code $rc (see $out/$name.log)" >&2
        results+=("$name $c $p $rc")
    done
done
[ "$dry_run" -eq 1 ] && exit 0

# --- summary -----------------------------------------------------------------------------
if ! command -v python3 >/dev/null 2>&1; then
    printf '%-12s %s\n' point "exit code / json"
    for r in "${results[@]}"; do
        # shellcheck disable=SC2086  # split "name c p rc" into fields
        set -- $r
        printf '%-12s %s %s\n' "$1" "$4" "$out/$1.json"
    done
    exit 0
fi

printf '%s\n' "${results[@]}" > "$out/points.txt"
python3 - "$out" <<'EOF'
# Summarise the JSON of each point listed in OUT/points.txt (name conns pipeline rc). The loadgen JSON schema is not fixed here, so the
# columns are found by key name: the first match in the top level, then in nested
# objects (those named overall/all/total/summary first). Unit suffixes such as _us or
# _ms are kept in the column header.
import json, re, sys

out = sys.argv[1]
WANTED = [
    ("ops/s", r"^(ops_per_s(ec)?|throughput(_ops_per_s(ec)?)?|ops_s)$"),
    ("p50", r"^p50(_(ns|us|ms|s))?$"),
    ("p99", r"^p99(_(ns|us|ms|s))?$"),
    ("p99.9", r"^p99(\.|_)?9(_(ns|us|ms|s))?$"),
    ("p99.99", r"^p99(\.|_)?99(_(ns|us|ms|s))?$"),
    ("max", r"^max(_(ns|us|ms|s))?$"),
    ("errors", r"^(errors|error_count|errors_total)$"),
]
PREFERRED = ("overall", "all", "total", "summary")

def find(obj, pattern):
    """Breadth-first search for the first key matching pattern with a number value."""
    queue = [obj]
    while queue:
        node = queue.pop(0)
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if re.match(pattern, str(key)) and isinstance(value, (int, float)):
                return key, value
        nested = [(k, v) for k, v in node.items() if isinstance(v, dict)]
        nested.sort(key=lambda kv: 0 if str(kv[0]).lower() in PREFERRED else 1)
        queue.extend(v for _, v in nested)
    return None, None

rows, headers = [], [label for label, _ in WANTED]
for line in open("%s/points.txt" % out).read().splitlines():
    name, c, p, rc = line.split()
    row = [c, p]
    if rc != "0":
        rows.append(row + ["exit %s" % rc] + [""] * (len(WANTED) - 1))
        continue
    try:
        with open("%s/%s.json" % (out, name)) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        rows.append(row + ["no json: %s" % e.__class__.__name__] + [""] * (len(WANTED) - 1))
        continue
    for i, (label, pattern) in enumerate(WANTED):
        key, value = find(data, pattern)
        if key is None:
            row.append("-")
            continue
        suffix = re.search(r"_(ns|us|ms|s)$", str(key))
        if suffix and headers[i] == label:
            headers[i] = "%s(%s)" % (label, suffix.group(1))
        row.append("%.0f" % value if isinstance(value, float) and value >= 100 else str(value))
    rows.append(row)

table = [["conns", "pipeline"] + headers] + rows
widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
for r in table:
    print("  ".join(cell.rjust(w) for cell, w in zip(r, widths)))
print("json and logs in %s" % out)
EOF
