#!/usr/bin/env bash
# The long version of llama-cpp/tests/long_run.rs, whose figures are the ones of record
# (docs/hardening.md): 200 load -> context -> generate 32 -> free cycles on the tiny
# synthetic qwen3moe with overrides (CPU) and through an in-process RPC server, each
# checked for RSS growth under 2 MiB after warm-up and a constant count of open file
# descriptors; then 8 threads with their own contexts on one shared model for a minute,
# every generation identical to the single-thread reference.
#
# Usage: scripts/long-run.sh [CYCLES] [SOAK_SECONDS]   (defaults: 200 60)
set -euo pipefail
cd "$(dirname "$0")/.."
export LLAMA_CPP_MOE_CYCLES="${1:-200}"
export LLAMA_CPP_MOE_SOAK_SECS="${2:-60}"
mkdir -p target
# The whole output stays in target/long-run.log; pipefail keeps cargo's verdict.
cargo test --release -p llama-cpp-moe --test long_run -- --nocapture --test-threads 1 2>&1 |
    tee target/long-run.log | grep -E '^(long_run:|test result)|long_run: '
