# Shared by the cluster benchmark scripts (sourced, not run): the PIDs of the processes
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
