#!/usr/bin/env bash
# Verifies the llama-cpp-rs pull request in upstream/llama-cpp-rs/ against the published crate.
#
#   bash scripts/upstream-check.sh
#
# 1. Downloads llama-cpp-2 =0.1.160 with cargo into a fresh temporary directory, together with
#    llama-cpp-sys-2 =0.1.161 (what 0.1.160's `^0.1.160` requirement resolves to today, and the
#    llama.cpp this workspace pins, so our rpc_server speaks the same RPC protocol).
# 2. Makes a git repository of the pristine crate, checks the series with `git apply --check`
#    and applies it with `git am`.
# 3. Builds the patched crate (llama-cpp-sys-2 with GGML_RPC=ON: its build script forwards
#    GGML_* variables to cmake and links every library cmake installs), runs its unit tests and
#    the doctests of model::params.
# 4. Makes synthetic models with this workspace's gguf_synth (one per MoE arch, plus a
#    cohere2moe with fused ffn_gate_up_exps converted from the deepseek one), starts this
#    workspace's rpc_server on loopback, and runs upstream/llama-cpp-rs/check: it loads every
#    model through the patched LlamaModelParams and checks which tensors moved, the RPC
#    buffer sizes, and that greedy tokens match the all-on-RPC baseline.
#
# Environment (all optional):
#   UPSTREAM_CHECK_DIR         work directory (default: a new mktemp dir, removed on success)
#   UPSTREAM_CHECK_TARGET_DIR  cargo target dir of the temporary workspace; point it at a
#                              directory you keep to build llama-cpp-sys-2's C++ only once
#   UPSTREAM_CHECK_PORT        loopback port for the RPC server (default 50152)
#   UPSTREAM_CHECK_VERBOSE     set to echo llama.cpp's log of every load
# Time on a 2-core machine shared with other builds: 1481 s from scratch (almost all of it
# llama-cpp-sys-2's C++), 270 s with UPSTREAM_CHECK_TARGET_DIR kept. Hence not in .ci/run.
# Our own examples are built with this workspace's usual settings (LLAMA_CPP_PREBUILT_DIR is
# honoured there as everywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
SECONDS=0

LLAMA_CPP_2_VERSION=0.1.160
LLAMA_CPP_SYS_2_VERSION=0.1.161
PORT="${UPSTREAM_CHECK_PORT:-50152}"
PATCHES="$REPO/upstream/llama-cpp-rs/patches"

step() { echo "=== [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }

# llama-cpp-sys-2's build script runs bindgen, which panics with a backtrace minutes into
# the build when it cannot load libclang: look for it first, where clang-sys looks.
has_libclang() {
    local dirs=()
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        dirs=("$LIBCLANG_PATH")
    else
        command -v llvm-config >/dev/null 2>&1 && dirs+=("$(llvm-config --libdir)")
        ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' && return 0
        dirs+=(/usr/lib/llvm-*/lib /usr/lib64 /usr/lib /usr/lib/x86_64-linux-gnu /usr/local/lib
            /Library/Developer/CommandLineTools/usr/lib /opt/homebrew/opt/llvm/lib)
    fi
    local d f
    for d in "${dirs[@]}"; do
        for f in "$d"/libclang.so* "$d"/libclang-*.so* "$d"/libclang.dylib; do
            [ -e "$f" ] && return 0
        done
    done
    return 1
}
if ! has_libclang; then
    echo "upstream-check: no libclang${LIBCLANG_PATH:+ in LIBCLANG_PATH=$LIBCLANG_PATH} (llama-cpp-sys-2 runs bindgen): install libclang-dev (Debian/Ubuntu), clang-devel (Fedora) or the Xcode command line tools (macOS), or point LIBCLANG_PATH at the directory holding libclang" >&2
    exit 1
fi

if [ -n "${UPSTREAM_CHECK_DIR:-}" ]; then
    WORK="$UPSTREAM_CHECK_DIR"
    mkdir -p "$WORK"
    KEEP_WORK=1
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/upstream-check.XXXXXX")"
    KEEP_WORK=0
fi
TARGET_DIR="${UPSTREAM_CHECK_TARGET_DIR:-$WORK/target}"

RPC_PID=""
cleanup() {
    status=$?
    if [ -n "$RPC_PID" ]; then
        kill "$RPC_PID" 2>/dev/null || true
        wait "$RPC_PID" 2>/dev/null || true
    fi
    if [ "$status" -eq 0 ] && [ "$KEEP_WORK" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "work directory kept: $WORK"
    fi
}
trap cleanup EXIT

step "build this workspace's gguf_synth and rpc_server"
cargo build -q -p llama-cpp-moe-examples --example gguf_synth --example rpc_server
OUR_BIN="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/examples"

step "download llama-cpp-2 =$LLAMA_CPP_2_VERSION with cargo into $WORK"
rm -rf "$WORK/fetch" "$WORK/llama-cpp-2" "$WORK/check" "$WORK/models"
mkdir -p "$WORK/fetch/src"
cat > "$WORK/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-llama-cpp-2"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
llama-cpp-2 = "=$LLAMA_CPP_2_VERSION"
llama-cpp-sys-2 = "=$LLAMA_CPP_SYS_2_VERSION"
EOF
echo "fn main() {}" > "$WORK/fetch/src/main.rs"
(cd "$WORK/fetch" && cargo fetch -q)
CRATE_SRC="$(cd "$WORK/fetch" && cargo metadata --format-version 1 |
    grep -o "\"manifest_path\":\"[^\"]*/llama-cpp-2-$LLAMA_CPP_2_VERSION/Cargo.toml\"" |
    head -1 | sed 's/"manifest_path":"\(.*\)\/Cargo.toml"/\1/')"
[ -d "$CRATE_SRC/src" ] || { echo "llama-cpp-2 $LLAMA_CPP_2_VERSION not found after cargo fetch"; exit 1; }
echo "published source: $CRATE_SRC"

step "apply the patch series to a git repository of the pristine crate"
cp -r "$CRATE_SRC" "$WORK/llama-cpp-2"
chmod -R u+w "$WORK/llama-cpp-2"
GIT=(git -C "$WORK/llama-cpp-2" -c user.name=upstream-check -c user.email=upstream-check@localhost
    -c commit.gpgsign=false)
"${GIT[@]}" init -q
"${GIT[@]}" add -A
"${GIT[@]}" commit -q -m "llama-cpp-2 $LLAMA_CPP_2_VERSION as published on crates.io"
# One at a time: every patch of the series must apply to the tree its predecessors left.
for patch in "$PATCHES"/*.patch; do
    "${GIT[@]}" apply --check "$patch"
    "${GIT[@]}" am -q "$patch"
done
"${GIT[@]}" log --oneline

step "workspace: patched llama-cpp-2 + the check program"
mkdir -p "$WORK/check"
cp -r "$REPO/upstream/llama-cpp-rs/check/src" "$WORK/check/src"
cat > "$WORK/check/Cargo.toml" <<EOF
[package]
name = "upstream-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
llama-cpp-2 = { path = "../llama-cpp-2" }
llama-cpp-sys-2 = "=$LLAMA_CPP_SYS_2_VERSION"
EOF
cat > "$WORK/Cargo.toml" <<EOF
[workspace]
resolver = "2"
members = ["llama-cpp-2", "check"]
EOF
cp "$WORK/fetch/Cargo.lock" "$WORK/Cargo.lock"

# GGML_RPC=ON gives the loopback second device. Native CPU code and a Release C++ build make
# the client's CPU kernels the ones our rpc_server (built the same way) runs, so moving
# experts between the two cannot change a token. CMAKE_BUILD_PARALLEL_LEVEL defaults to all
# cores in llama-cpp-sys-2; keep whatever the caller set.
export CARGO_TARGET_DIR="$TARGET_DIR"
export GGML_RPC=ON LLAMA_LIB_PROFILE=Release RUSTFLAGS="-C target-cpu=native"
unset LLAMA_CPP_PREBUILT_DIR

step "build the patched crate, its tests and the check program (llama-cpp-sys-2's C++ on the first run)"
# --all-targets activates llama-cpp-2's dev-dependencies, as the test runs below do; building
# the program without them resolves bindgen's dependencies differently, which gives
# llama-cpp-sys-2 a second build directory and compiles llama.cpp twice.
(cd "$WORK" && cargo build -q -p llama-cpp-2 -p upstream-check --all-targets)

# Prints cargo's output only when it fails; otherwise its "test result" lines.
run_tests() {
    local log="$WORK/$1.log"
    shift
    if ! (cd "$WORK" && cargo test -p llama-cpp-2 "$@") >"$log" 2>&1; then
        cat "$log"
        exit 1
    fi
    grep -E "^test result" "$log"
}

step "unit tests of the patched crate"
run_tests unit-tests --lib

step "doctests of model::params"
run_tests doctests --doc -- model::params

step "synthetic models"
mkdir -p "$WORK/models"
MODELS=()
for arch in qwen3moe gpt-oss phimoe deepseek mixtral; do
    "$OUR_BIN/gguf_synth" --arch "$arch" --preset tiny -o "$WORK/models/$arch.gguf" >/dev/null
    MODELS+=("$WORK/models/$arch.gguf")
done
"$TARGET_DIR/debug/upstream-check" fuse-gate-up "$WORK/models/deepseek.gguf" "$WORK/models/cohere2moe-fused.gguf"
MODELS+=("$WORK/models/cohere2moe-fused.gguf")

step "RPC server on 127.0.0.1:$PORT"
"$OUR_BIN/rpc_server" --host 127.0.0.1 --port "$PORT" >"$WORK/rpc_server.log" 2>&1 &
RPC_PID=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$RPC_PID" 2>/dev/null || { cat "$WORK/rpc_server.log"; exit 1; }
    sleep 0.1
done

step "load every model through the patched API over RPC"
"$TARGET_DIR/debug/upstream-check" run --rpc "127.0.0.1:$PORT" "${MODELS[@]}" | tee "$WORK/summary.txt"

step "upstream-check passed in ${SECONDS} s"
