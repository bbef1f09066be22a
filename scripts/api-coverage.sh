#!/usr/bin/env bash
# The safe crate's coverage of llama.h: for every non-deprecated LLAMA_API function of the
# pinned include/llama.h, the safe item that calls it (in llama-cpp/src, directly or
# through a shim function) or the reason it is not wrapped (scripts/api-coverage-reasons.txt:
# `function: reason`; a reason starting with "pending" marks one still to be wrapped).
#
#   scripts/api-coverage.sh            print the table (markdown) and a summary line
#   scripts/api-coverage.sh --write    regenerate docs/api-coverage.md
#   scripts/api-coverage.sh --check    fail when a function has neither a caller nor a
#                                      reason, a reason names no such function or a wrapped
#                                      one, or docs/api-coverage.md is not current (.ci/run)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PIN_PACKAGE=llama-cpp-sys-2
pin_manifest=$(cargo metadata --locked --format-version 1 \
        --manifest-path "$REPO/vendor/llama-cpp-pin/Cargo.toml" |
    grep -o "\"manifest_path\":\"[^\"]*/$PIN_PACKAGE-[0-9][^\"/]*/Cargo.toml\"" | head -1 |
    sed 's/"manifest_path":"\(.*\)"/\1/')
[ -n "$pin_manifest" ] || { echo "cargo metadata names no $PIN_PACKAGE package" >&2; exit 1; }
header="$(dirname "$pin_manifest")/llama.cpp/include/llama.h"
[ -f "$header" ] || { echo "no $header" >&2; exit 1; }
# llama-cpp-2, the crate most of our users come from: cargo downloads its source once.
LLAMA_CPP_2_VERSION=0.1.160
fetch=$(mktemp -d "${TMPDIR:-/tmp}/api-coverage.XXXXXX")
trap 'rm -rf "$fetch"' EXIT
mkdir "$fetch/src"
touch "$fetch/src/lib.rs"
printf '[package]\nname = "api-coverage-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nllama-cpp-2 = { version = "=%s", default-features = false }\n[workspace]\n' \
    "$LLAMA_CPP_2_VERSION" > "$fetch/Cargo.toml"
lc2=$(cargo metadata -q --format-version 1 --manifest-path "$fetch/Cargo.toml" |
    grep -o "\"manifest_path\":\"[^\"]*/llama-cpp-2-$LLAMA_CPP_2_VERSION/Cargo.toml\"" | head -1 |
    sed 's/"manifest_path":"\(.*\)\/Cargo.toml"/\1/')
[ -d "$lc2/src" ] || { echo "cargo did not fetch llama-cpp-2 $LLAMA_CPP_2_VERSION" >&2; exit 1; }
doc="$REPO/docs/api-coverage.md"
case "${1:-}" in
    --write) python3 "$REPO/scripts/api_coverage.py" "$header" "$REPO" --llama-cpp-2 "$lc2" --out "$doc" ;;
    --check)
        fresh="$fetch/api-coverage.md"
        python3 "$REPO/scripts/api_coverage.py" "$header" "$REPO" --llama-cpp-2 "$lc2" --check --out "$fresh"
        diff -u "$doc" "$fresh" >&2 \
            || { echo "docs/api-coverage.md is not current: run scripts/api-coverage.sh --write" >&2; exit 1; }
        ;;
    "") python3 "$REPO/scripts/api_coverage.py" "$header" "$REPO" --llama-cpp-2 "$lc2" ;;
    *) echo "usage: $0 [--write|--check]" >&2; exit 2 ;;
esac
