#!/usr/bin/env bash
# The first-build figures of the README: the C++ build alone
# (`cargo build --release -p llama-cpp-moe-sys`) and the README's first command
# (`cargo run --release --example simple_moe`, with --timings), each from an empty target
# directory, one after the other in one run, with the load average before and after each.
# The ratio of the two is what the README reports; figures from different runs (or with
# other work on the machine) do not compare.
#
# Usage: scripts/first-build-timing.sh [WORK_DIR]   (default: target/first-build-timing)
# Needs the cargo registry cache (or network) for the dependencies; takes about 6 minutes
# on 2 idle cores. The synthetic model is generated into WORK_DIR/cache, as a new user's is.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/first-build-timing}"
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

seconds() { # COMMAND... : runs it, prints its wall time in seconds (2 decimals)
    local start end
    start=$(date +%s.%N)
    "$@" >>"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; exit 1; }
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

echo "cores: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ninja: $(ninja --version 2>/dev/null || echo 'not installed (cmake uses make)')"
sys=$(seconds cargo build --release -p llama-cpp-moe-sys --target-dir "$work/sys")
echo "cargo build --release -p llama-cpp-moe-sys: ${sys} s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
run=$(LLAMA_CPP_MOE_CACHE="$work/cache" seconds cargo run --release --example simple_moe \
    --target-dir "$work/run" --timings)
echo "cargo run --release --example simple_moe: ${run} s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v a="$run" -v b="$sys" 'BEGIN { printf "ratio: %.2f (goal: <= 1.3)\n", a / b }'
echo "cargo's timings report: $(ls "$work"/run/cargo-timings/cargo-timing-*.html)"
