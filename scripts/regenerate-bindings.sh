#!/usr/bin/env bash
# Regenerates the checked-in bindings (llama-cpp-sys/src/bindings/) from the pinned
# llama.cpp with bindgen; needs libclang. Run it after changing the pin, wrapper.h, the
# shim's header or the bindgen options in llama-cpp-sys/build/bindings.rs, and commit the
# result. `.ci/run` fails when the checked-in files differ from a fresh run.
#
# Usage: scripts/regenerate-bindings.sh [DIR]   (default: llama-cpp-sys/src/bindings)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-llama-cpp-sys/src/bindings}")
# Only the build script has new work: the llama.cpp build comes from the shared cache
# (or LLAMA_CPP_PREBUILT_DIR).
# The feature `bindgen` compiles bindgen into the build script (left out by default).
LLAMA_CPP_MOE_REGENERATE_BINDINGS="$dir" cargo build -q -p llama-cpp-moe-sys --features bindgen
echo "bindings written to $dir"
