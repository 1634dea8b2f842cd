#!/usr/bin/env bash
# test.sh — self-test of the tuning kit. Needs no root and no network; writes only to a
# temporary directory (and the O_DIRECT probe file host-check.sh creates and removes in
# /tmp). Exit 0 when every check passes. Usage: tuning/test.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
failures=0
pass() { echo "ok    $*"; }
fail() { echo "FAIL  $*"; failures=$((failures + 1)); }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Syntax of every script.
for f in "$here"/*.sh; do
    if bash -n "$f"; then pass "bash -n $(basename "$f")"; else fail "bash -n $(basename "$f")"; fi
done

# 2. host-check.sh on /tmp: exit 0, at least 8 check lines, only known line shapes.
rc=0
"$here/host-check.sh" --data-dir /tmp > "$work/check.out" 2>&1 || rc=$?
checks="$(grep -cE '^(OK|WARN|INFO) ' "$work/check.out" || true)"
if [ "$rc" -eq 0 ]; then pass "host-check.sh exits 0"; else fail "host-check.sh exited $rc"; cat "$work/check.out"; fi
if [ "$checks" -ge 8 ]; then pass "host-check.sh printed $checks check lines"; else fail "host-check.sh printed $checks check lines (< 8)"; fi
if grep -vqE '^(OK|WARN|INFO) |^host-check: ' "$work/check.out"; then
    fail "host-check.sh printed unexpected lines:"; grep -vE '^(OK|WARN|INFO) |^host-check: ' "$work/check.out"
else
    pass "every host-check.sh line is a check or the summary"
fi
if compgen -G '/tmp/.ringkv-odirect.*' > /dev/null; then
    fail "host-check.sh left an O_DIRECT probe file in /tmp"
else
    pass "host-check.sh removed its probe file"
fi

# 3. --strict exits 1 exactly when a WARN was printed.
rc=0
"$here/host-check.sh" --data-dir /tmp --strict > "$work/strict.out" 2>&1 || rc=$?
if grep -q '^WARN ' "$work/strict.out"; then want=1; else want=0; fi
if [ "$rc" -eq "$want" ]; then pass "--strict exit code $rc matches the warnings"; else fail "--strict exited $rc, want $want"; fi
rc=0
"$here/host-check.sh" --data-dir "$work/does-not-exist" --strict > /dev/null 2>&1 || rc=$?
if [ "$rc" -eq 1 ]; then pass "--strict fails on a missing data dir"; else fail "--strict on a missing data dir exited $rc, want 1"; fi

# 4. sweep.sh against a fake loadgen: arguments, bounded runs, JSON files, summary.
cat > "$work/fake-loadgen" <<'EOF'
#!/usr/bin/env bash
# Records its arguments, fails for 3 connections, else writes a JSON result.
echo "$*" >> "$FAKE_LOG"
json=""; conns=""
while [ $# -gt 0 ]; do
    case "$1" in --json) json="$2"; shift 2 ;; --connections) conns="$2"; shift 2 ;; *) shift ;; esac
done
[ "$conns" = 3 ] && { echo "simulated failure" >&2; exit 3; }
printf '{"overall": {"ops_per_sec": %d.4, "p50_us": 11, "p99_us": 42, "p99_9_us": 90, "max_us": 700}, "errors": 0}\n' \
    "$((conns * 1000))" > "$json"
EOF
chmod +x "$work/fake-loadgen"
rc=0
FAKE_LOG="$work/args.log" "$here/sweep.sh" --loadgen "$work/fake-loadgen" --connections 1,2,3 \
    --pipeline 4 --duration 1s --out "$work/sweep" -- --value-size 64 > "$work/sweep.out" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then pass "sweep.sh exits 0 with a failing point"; else fail "sweep.sh exited $rc"; cat "$work/sweep.out"; fi
runs="$(wc -l < "$work/args.log" 2>/dev/null || echo 0)"
if [ "$runs" -eq 3 ]; then pass "sweep.sh ran 3 points"; else fail "sweep.sh ran $runs points, want 3"; fi
if [ "$(grep -c -- '--hosts 127.0.0.1:7400 .*--duration 1s .*--value-size 64' "$work/args.log" || true)" -eq 3 ]; then
    pass "every run got the default host, --duration and the extra args"
else
    fail "loadgen arguments wrong:"; cat "$work/args.log"
fi
if [ -s "$work/sweep/c1-p4.json" ] && [ -s "$work/sweep/c2-p4.json" ] && [ -s "$work/sweep/sweep.txt" ]; then
    pass "sweep.sh wrote one JSON per point and sweep.txt"
else
    fail "sweep.sh output files missing: $(ls "$work/sweep" 2>/dev/null | tr '\n' ' ')"
fi
if command -v python3 >/dev/null 2>&1; then
    if grep -qE '^ +1 +4 +1000 +11 +42 +90 +- +700 +0$' "$work/sweep.out" &&
       grep -qE '^ +2 +4 +2000 ' "$work/sweep.out" &&
       grep -qE '^ +3 +4 +exit 3' "$work/sweep.out" &&
       grep -q 'p99(us)' "$work/sweep.out"; then
        pass "sweep.sh summary table has the parsed values and the failed point"
    else
        fail "sweep.sh summary table:"; cat "$work/sweep.out"
    fi
fi
rc=0
"$here/sweep.sh" --dry-run -- --hosts 10.0.0.1:7400 > /dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then pass "sweep.sh refuses --hosts after --"; else fail "sweep.sh accepted --hosts after -- (exit $rc)"; fi
rc=0
"$here/sweep.sh" --dry-run --duration forever > /dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then pass "sweep.sh refuses an unbounded duration"; else fail "sweep.sh accepted --duration forever (exit $rc)"; fi
rc=0
"$here/sweep.sh" --dry-run --connections 1,x > /dev/null 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then pass "sweep.sh refuses a bad --connections list"; else fail "sweep.sh accepted --connections 1,x (exit $rc)"; fi

# 5. Every sysctl in the profile exists on this kernel (catches typos in names).
while IFS= read -r line; do
    key="${line%%=*}"; key="${key// /}"
    if [ -e "/proc/sys/${key//./\/}" ]; then pass "sysctl $key exists"; else fail "sysctl $key does not exist in /proc/sys"; fi
done < <(grep -E '^[a-z]' "$here/sysctl/99-ringkv.conf")

# 6. The unit keeps the contract lines and has no active SystemCallFilter.
unit="$here/systemd/ringkv.service"
for want in 'ExecStart=/usr/local/bin/ringkv serve --config /etc/ringkv/ringkv.toml' \
            'LimitMEMLOCK=infinity' 'LimitNOFILE=1048576' 'KillSignal=SIGTERM' 'User=ringkv'; do
    if grep -qxF "$want" "$unit"; then pass "unit has $want"; else fail "unit lacks $want"; fi
done
if grep -q '^SystemCallFilter' "$unit"; then fail "unit has an active SystemCallFilter"; else pass "unit has no active SystemCallFilter"; fi

# 7. Every key of the TOML example (set or commented out) is a ConfigLayer field.
config_rs="$repo/src/config.rs"
if command -v python3 >/dev/null 2>&1 && [ -f "$config_rs" ]; then
    if python3 - "$here/systemd/ringkv.toml.example" "$config_rs" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
try:
    import tomllib
    tomllib.loads(text)
except ImportError:
    pass
keys = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.M))
layer = open(sys.argv[2]).read().split("pub struct ConfigLayer", 1)[1].split("\n}\n", 1)[0]
fields = set(re.findall(r"^\s*pub ([a-z_]+): Option<", layer, re.M))
unknown = sorted(keys - fields)
if unknown or not keys:
    print("unknown keys:", unknown); sys.exit(1)
EOF
    then pass "TOML example parses and uses only ConfigLayer keys"
    else fail "TOML example has keys ConfigLayer does not know"; fi
else
    echo "skip  TOML key check (needs python3 and src/config.rs)"
fi

# 8. shellcheck, when installed (not installed by this script).
if command -v shellcheck >/dev/null 2>&1; then
    if shellcheck "$here"/*.sh; then pass "shellcheck"; else fail "shellcheck"; fi
else
    echo "skip  shellcheck (not installed)"
fi

if [ "$failures" -gt 0 ]; then
    echo "tuning/test.sh: $failures failure(s)"
    exit 1
fi
echo "tuning/test.sh: all checks passed"
