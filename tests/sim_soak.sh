#!/usr/bin/env bash
# Soak the deterministic cluster simulator: run chunks of fresh random seeds until
# SIM_SOAK_SECONDS (default 600) have passed, then report. Every failing seed is printed
# with its replay command (SIM_SEED=... cargo test --test sim).
#
#   SIM_SOAK_SECONDS=3600 tests/sim_soak.sh
#   SIM_SOAK_CHUNK=5000   seeds per cargo invocation (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${SIM_SOAK_SECONDS:-600}"
chunk="${SIM_SOAK_CHUNK:-2000}"
log_dir="$(mktemp -d "${TMPDIR:-/tmp}/ringkv-sim-soak.XXXXXX")"

# Build once, outside the timed loop.
cargo test --test sim --no-run --quiet

deadline=$(( $(date +%s) + seconds ))
chunks=0
failed_chunks=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    # A fresh 63-bit base per chunk, so soaks never repeat the CI range.
    base=$(( $(od -An -N8 -tu8 /dev/urandom | tr -d ' ') & 0x7fffffffffffffff ))
    log="$log_dir/chunk-$chunks.log"
    if SIM_SEEDS="$chunk" SIM_SEED_BASE="$base" \
        cargo test --test sim --quiet seed_budget -- --nocapture >"$log" 2>&1; then
        grep -E '^sim: ' "$log" || true
    else
        failed_chunks=$(( failed_chunks + 1 ))
        grep -E '^sim: |FAILED|replay:' "$log" || cat "$log"
    fi
    chunks=$(( chunks + 1 ))
done

echo "soak: $chunks chunks of $chunk seeds in ${seconds}s, $failed_chunks chunk(s) with failures; logs in $log_dir"
[ "$failed_chunks" -eq 0 ]
