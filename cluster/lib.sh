# Shared by the cluster benchmark scripts and benches/dbeel/run.sh (sourced, not run): the PIDs of the processes
# a script started, and `cleanup`, which kills them (SIGKILL) and reaps them. Scripts
# add each PID to `pids` and call `cleanup` from their EXIT trap and between runs.
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}

# Build the release binaries first unless BUILD=0 (to run binaries built elsewhere).
build_unless_told_not_to() {
    if [ "${BUILD:-1}" = 1 ]; then
        cargo build --release --workspace --quiet
    fi
}

# A script's common start: a fresh work directory in `work` (named after $1), an EXIT
# trap that kills the started processes and removes it, then the build.
bench_setup() {
    work="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    trap 'cleanup; rm -rf "$work"' EXIT
    build_unless_told_not_to
}

# Client address of node $1 (0, 1, ...): nodes sit 10 ports apart from `port_base`.
addr() { echo "127.0.0.1:$((port_base + $1 * 10))"; }

# Busy clock ticks of the whole machine (all CPUs): user, nice, system, irq, softirq.
machine_ticks() {
    local fields
    read -r -a fields < /proc/stat
    echo $((fields[1] + fields[2] + fields[3] + fields[6] + fields[7]))
}

# utime + stime (clock ticks) of the given PIDs together, all their threads.
cpu_ticks() {
    local total=0 pid fields
    for pid in "$@"; do
        read -r -a fields < <(cut -d')' -f2 "/proc/$pid/stat")
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
