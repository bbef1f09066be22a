#!/usr/bin/env bash
# UNTESTED: written without access to a GPU machine. Expect to fix paths or flags on
# first use, and say so when publishing its numbers.
#
# MoE offload on one CUDA GPU: a synthetic Qwen3-30B-A3B-shaped qwen3moe (`full` preset,
# Q4_0, ~16 GiB), all layers on the GPU (-ngl all) with the routed experts of
# none / the first 24 / all layers / the last 24 layers kept in host RAM, Rust vs native.
#
# usage: scripts/gpu-bench.sh [OUT_DIR]   (needs nvcc: CUDA_PATH, CUDA_HOME or PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/gpu-bench}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# The CPU-only prebuilt libraries cannot serve here: build llama.cpp from the pinned
# source with the CUDA backend (feature `cuda`), for this GPU's architecture only.
unset LLAMA_CPP_PREBUILT_DIR
if [ -z "${LLAMA_CPP_CUDA_ARCHITECTURES:-}" ]; then
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
    export LLAMA_CPP_CUDA_ARCHITECTURES="${cc:-native}"
fi
cargo build --release -p llama-cpp-moe-benches --features cuda --example bench_moe
cargo build --release --example gguf_synth

model="$out/qwen3moe-full-q4_0-seed1.gguf"
if [ ! -f "$model" ]; then
    cargo run --release --example gguf_synth -- \
        --arch qwen3moe --preset full --type q4_0 --seed 1 -o "$model"
fi

# qwen3moe full has 48 layers: --cpu-moe-layers 24-47 keeps the last 24 layers' experts
# in host RAM, --n-cpu-moe 24 the first 24; the "none" row (= --n-cpu-moe 0) is always run.
run() {
    cargo run --release -q -p llama-cpp-moe-benches --features cuda --example bench_moe -- \
        --model "$model" -ngl all --threads "$(nproc)" \
        --n-cpu-moe 24 --cpu-moe --cpu-moe-layers 24-47 \
        --prompts short,long,very-long --reps 3 "$@"
}
uptime | tee "$out/uptime.txt"
run | tee "$out/bench.md"
echo "results in $out"
