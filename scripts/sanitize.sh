#!/usr/bin/env bash
# AddressSanitizer + LeakSanitizer run of a representative subset of the safe crate's
# tests: load, overrides, context, generate, RPC, free (and the long-run cycles).
#
# Two modes:
# - full (default): both sides instrumented. llama.cpp, ggml and the shim are compiled
#   with -fsanitize=address (through CFLAGS/CXXFLAGS, which the cmake crate forwards),
#   the Rust code with nightly's -Zsanitizer=address, whose runtime serves both. It
#   builds its own llama.cpp in target/asan (LLAMA_CPP_PREBUILT_DIR would link the
#   uninstrumented one): 76 C++ objects, over 40 minutes on 2 busy cores the first time.
# - SANITIZE_CPP=0: the Rust side instrumented, llama.cpp as built normally
#   (LLAMA_CPP_PREBUILT_DIR is honoured), in target/asan-rust. ASan's allocator still
#   replaces malloc/free for the whole process, so LeakSanitizer sees every leak, C++'s
#   included, and double or invalid frees anywhere; out-of-bounds and use-after-free
#   are caught in Rust code only (our FFI layer).
# valgrind is no alternative on this machine: llama.cpp is built -march=native, and
# valgrind 3.19 does not decode AVX-512.
#
# Usage: [SANITIZE_CPP=0] scripts/sanitize.sh [extra cargo test args]
# Result of record: docs/hardening.md.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
if [ "${SANITIZE_CPP:-1}" = 1 ]; then
    unset LLAMA_CPP_PREBUILT_DIR
    export CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g1"
    export CXXFLAGS="$CFLAGS"
    target_dir=target/asan
else
    target_dir=target/asan-rust
fi
# --target keeps build scripts and proc macros uninstrumented (they run on the host).
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
export RUSTDOCFLAGS="$RUSTFLAGS"
# Leaks are errors; the suppressions file lists third-party noise, each with its reason.
# fast_unwind_on_malloc=0: llama.cpp has no frame pointers; without DWARF unwinding a
# leak stack ends in operator new and no suppression could name its real origin.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:fast_unwind_on_malloc=0"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=1"
# long_run is left out: ASan's quarantine holds freed memory, so its RSS budget means
# nothing here; every test below frees what it loads, and LeakSanitizer checks at exit.
tests=(model_load moe_options context_decode generate_stream model_devices threads_shared_model)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done

cargo +nightly test -p llama-cpp-moe --target "$host" --target-dir "$target_dir" \
    "${args[@]}" "$@" -- --test-threads 1
echo "sanitize: ${tests[*]}: no AddressSanitizer or LeakSanitizer report"
