#!/usr/bin/env bash
# Coverage-guided fuzzing of the GGUF reader, the override-pattern validation, the
# examples' argument parser, Model::load, Context::new, state restores and LoRA loads (cargo-fuzz + libFuzzer;
# needs a nightly toolchain and `cargo install cargo-fuzz`). See fuzz/README.md.
#
#   scripts/fuzz.sh replay      stable: every seed, corpus entry and regression, once
#   scripts/fuzz.sh short [S]   nightly: each target S seconds (default 15) from the corpus
#   scripts/fuzz.sh campaign [TARGET...]
#                               nightly: 1,000,000 runs per parser target, 100,000 loads
#                               and 100,000 contexts and restores, then merge what found new coverage
#                               into fuzz/corpus
#   scripts/fuzz.sh seeds       stable: rewrite fuzz/seeds from the synthetic factory
#
# LLAMA_CPP_PREBUILT_DIR is honoured (the C++ is not instrumented either way: libFuzzer's
# coverage and AddressSanitizer cover the Rust side, where the checks live).
set -euo pipefail
cd "$(dirname "$0")/.."

parser_targets=(gguf_open override_patterns example_args)
# Per-target input size cap: the GGUF seeds are up to 42 KiB; parser inputs are short.
max_len() {
    case $1 in
        gguf_open | model_load | lora_load) echo 65536 ;;
        context_params) echo 64 ;;
        state_load) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

fuzz_run() { # TARGET EXTRA_LIBFUZZER_ARGS...
    local target=$1; shift
    local work="fuzz/target/work-corpus/$target"
    mkdir -p "$work" "fuzz/corpus/$target"
    # New inputs go to the (ignored) work dir; the committed dirs are read-only seeds.
    (cd fuzz && cargo +nightly fuzz run -O "$target" \
        "../$work" "corpus/$target" "seeds/$target" -- \
        -max_len="$(max_len "$target")" -seed=1 -print_final_stats=1 "$@")
}

# Keeps the smallest inputs that together reach all the coverage the work dir found.
merge_into_corpus() { # TARGET
    local target=$1
    local fresh="fuzz/target/merged/$target"
    rm -rf "$fresh" && mkdir -p "$fresh"
    (cd fuzz && cargo +nightly fuzz run -O "$target" "../$fresh" \
        "corpus/$target" "../fuzz/target/work-corpus/$target" -- \
        -merge=1 -max_len="$(max_len "$target")")
    rm -rf "fuzz/corpus/$target" && mv "$fresh" "fuzz/corpus/$target"
    echo "$target: $(ls "fuzz/corpus/$target" | wc -l) corpus files, $(du -sh "fuzz/corpus/$target" | cut -f1)"
}

case "${1:-short}" in
    replay)
        cargo test --manifest-path fuzz/Cargo.toml --target-dir target --no-default-features
        ;;
    seeds)
        cargo run --manifest-path fuzz/Cargo.toml --target-dir target --no-default-features \
            --bin make_seeds
        ;;
    short)
        seconds=${2:-15}
        for t in "${parser_targets[@]}" model_load context_params state_load lora_load; do
            fuzz_run "$t" -max_total_time="$seconds"
        done
        ;;
    campaign)
        shift
        targets=("$@")
        [ "${#targets[@]}" -gt 0 ] || targets=("${parser_targets[@]}" model_load context_params state_load lora_load)
        for t in "${targets[@]}"; do
            runs=1000000
            case $t in model_load | context_params | state_load | lora_load) runs=100000 ;; esac
            fuzz_run "$t" -runs="$runs" -timeout=30
            merge_into_corpus "$t"
        done
        ;;
    *)
        echo "usage: $0 [replay|short [SECONDS]|campaign|seeds]" >&2
        exit 2
        ;;
esac
