#!/usr/bin/env bash
# AddressSanitizer + LeakSanitizer run of a representative subset of the safe crate's
# tests: load, overrides, context, generate, RPC, free (and the long-run cycles).
#
# Both sides are instrumented: llama.cpp, ggml and the shim are compiled with
# -fsanitize=address (through CFLAGS/CXXFLAGS, which the cmake crate forwards), the Rust
# code with nightly's -Zsanitizer=address, whose runtime serves both. It builds its own
# llama.cpp in target/asan (LLAMA_CPP_PREBUILT_DIR would link the uninstrumented one),
# which takes ~15-25 minutes on 2 cores the first time; the tests then take a few.
#
# Usage: scripts/sanitize.sh [extra cargo test args]
# Result of record: docs/hardening.md.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
unset LLAMA_CPP_PREBUILT_DIR
export CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g1"
export CXXFLAGS="$CFLAGS"
# --target keeps build scripts and proc macros uninstrumented (they run on the host).
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
export RUSTDOCFLAGS="$RUSTFLAGS"
# Leaks are errors; the suppressions file lists third-party noise, each with its reason.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=1"
# The cycle test's figures are meaningless under ASan (quarantine); keep it short.
export LLAMA_CPP_MOE_CYCLES="${LLAMA_CPP_MOE_CYCLES:-6}"
export LLAMA_CPP_MOE_SOAK_SECS="${LLAMA_CPP_MOE_SOAK_SECS:-2}"

tests=(model_load moe_options context_decode generate_stream model_devices long_run)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done

cargo +nightly test -p llama-cpp-moe --target "$host" --target-dir target/asan \
    "${args[@]}" "$@" -- --test-threads 1
echo "sanitize: ${tests[*]}: no AddressSanitizer or LeakSanitizer report"
