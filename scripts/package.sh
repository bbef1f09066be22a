#!/usr/bin/env bash
# Packages the publishable crates with `cargo package`, in dependency order, into one
# directory of .crate files.
#
#   bash scripts/package.sh [--allow-dirty] [--verify] [--publish-dry-run | --publish] [OUT_DIR]
#
# OUT_DIR defaults to target/packages. --publish-dry-run then runs
# `cargo publish --dry-run` on the same crates, all in one command, so that each
# dependent resolves the others from cargo's temporary local registry instead of
# crates.io, where they are not yet (one crate at a time, a dependent's dry run would
# fail until its dependencies are published). --publish uploads them, in dependency
# order, verified (the maintainers' release step; needs `cargo login`): publishing the -sys crate
# without this script would upload it without llama.cpp, and cargo's verification of
# such a package fails, as its build finds no source. --verify lets cargo build every
# package before packaging (and publishing): that compiles llama.cpp from the -sys
# package again, minutes on 2 cores.
#
# llama-cpp-moe-sys builds llama.cpp from source, so its package must carry the sources:
# this script stages the subset its build needs (see `stage_llama_cpp` below) from the
# pin (vendor/llama-cpp-pin: the llama.cpp/ directory of the crates.io package
# llama-cpp-sys-2, checksummed by the pin's Cargo.lock) into llama-cpp-sys/llama.cpp/,
# writes the pin record LLAMA_CPP_MOE_PIN.txt next to it, packages, and removes the
# staging directory again (it is .gitignore'd and never committed: no llama.cpp code lives
# in the repository). A -sys build prefers that bundled tree when it is present.
# Cargo counts those staged, git-ignored files as uncommitted changes, so it is always
# run with --allow-dirty (the packages' .cargo_vcs_info.json then says "dirty": true);
# this script makes the check itself instead, over everything else in the packaged
# crates, unless it is given --allow-dirty too.
#
# By default the packages are made with --no-verify: cargo's verification would build each
# crate again, llama.cpp included, in target/package/. `.ci/run` verifies them instead by
# building and running a consumer crate from the unpacked packages alone, offline
# (.ci/offline-consumer). crates.io rejects packages over 10 MB: the script fails if the
# -sys package is larger.
#
# Environment (optional):
#   PACKAGE_CRATES   the crates to package, in dependency order (default: all publishable)
#   CARGO_TARGET_DIR as for cargo (the .crate files are made in <target-dir>/package/)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

ALLOW_DIRTY=0
PUBLISH=
VERIFY=--no-verify
while [ $# -gt 0 ]; do
    case "$1" in
        --allow-dirty) ALLOW_DIRTY=1 ;;
        --publish-dry-run) PUBLISH=--dry-run ;;
        --publish) PUBLISH=upload; VERIFY= ;; # never upload what cargo did not build
        --verify) VERIFY= ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
    shift
done
OUT="${1:-$REPO/target/packages}"
case "$OUT" in /*) ;; *) OUT="$REPO/$OUT" ;; esac
CRATES=(${PACKAGE_CRATES:-llama-cpp-moe-gguf llama-cpp-moe-sys llama-cpp-moe llama-cpp-moe-cli llama-cpp-moe-server})
MAX_BYTES=$((10 * 1024 * 1024))
STAGE="$REPO/llama-cpp-sys/llama.cpp"
PIN_MANIFEST="$REPO/vendor/llama-cpp-pin/Cargo.toml"
PIN_PACKAGE=llama-cpp-sys-2

# Never delete a tree this script did not stage (ours carry the pin record).
if [ -e "$STAGE" ] && [ ! -f "$STAGE/LLAMA_CPP_MOE_PIN.txt" ]; then
    echo "$STAGE exists and was not staged by this script: move it away first" >&2
    exit 1
fi
cleanup() { rm -rf "$STAGE"; }
trap cleanup EXIT

# The pinned source: cargo downloads (once) and checksums the pin package.
pin_json=$(cargo metadata --locked --format-version 1 --manifest-path "$PIN_MANIFEST")
pin_manifest=$(printf '%s' "$pin_json" |
    grep -o "\"manifest_path\":\"[^\"]*/$PIN_PACKAGE-[0-9][^\"/]*/Cargo.toml\"" | head -1 |
    sed 's/"manifest_path":"\(.*\)"/\1/')
[ -n "$pin_manifest" ] || { echo "cargo metadata names no $PIN_PACKAGE package" >&2; exit 1; }
PIN_SRC="$(dirname "$pin_manifest")/llama.cpp"
pin_version=$(basename "$(dirname "$pin_manifest")")
pin_version=${pin_version#"$PIN_PACKAGE-"}
pin_checksum=$(awk -v name="$PIN_PACKAGE" '
    $0 == "name = \"" name "\"" { hit = 1; next }
    hit && /^checksum = / { gsub(/"/, "", $3); print $3; exit }
    /^\[\[package\]\]/ { hit = 0 }' "$REPO/vendor/llama-cpp-pin/Cargo.lock")
[ -f "$PIN_SRC/CMakeLists.txt" ] || { echo "$PIN_SRC is not a llama.cpp tree" >&2; exit 1; }

# The llama.cpp files the -sys build can use: cmake's configure step reads every
# CMakeLists.txt it adds (vendor/ is added unconditionally; of it only vendor/hash is
# compiled, the rest are header-only targets nothing here includes, so their
# CMakeLists.txt suffices), and the ggml backends the crate's features switch on (cpu,
# rpc, cuda, vulkan, metal, and blas, which metal turns on). Left out: tests, tools,
# examples, common/, docs, models, grammars, python, and the other ggml backends.
stage_llama_cpp() {
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    local paths=(
        LICENSE CMakeLists.txt cmake include src
        ggml/CMakeLists.txt ggml/cmake ggml/include
        ggml/src/ggml-cpu ggml/src/ggml-rpc ggml/src/ggml-cuda ggml/src/ggml-vulkan
        ggml/src/ggml-metal ggml/src/ggml-blas
        vendor/CMakeLists.txt vendor/hash
        vendor/miniaudio/CMakeLists.txt vendor/nlohmann/CMakeLists.txt
        vendor/sheredom/CMakeLists.txt vendor/stb/CMakeLists.txt
    )
    local f
    for f in "$PIN_SRC"/ggml/src/*; do
        [ -f "$f" ] && paths+=("ggml/src/${f##*/}")
    done
    (cd "$PIN_SRC" && tar cf - "${paths[@]}") | (cd "$STAGE" && tar xf -)
    # The registry's files are read-only; the staged copy must be removable.
    chmod -R u+w "$STAGE"
    cat > "$STAGE/LLAMA_CPP_MOE_PIN.txt" <<EOF
# The llama.cpp source this package of llama-cpp-moe-sys carries, written by
# scripts/package.sh: a subset of the llama.cpp/ directory of the crates.io package below
# (the pin of vendor/llama-cpp-pin in the repository; checksum from its Cargo.lock).
package = $PIN_PACKAGE
version = $pin_version
checksum = $pin_checksum
EOF
}

# `cargo pkgid` says path+file://DIR#NAME@VERSION (or DIR#VERSION when DIR ends in NAME).
crate_dirs=()
crate_versions=()
for crate in "${CRATES[@]}"; do
    id=$(cargo pkgid -p "$crate")
    dir=${id#path+file://}
    crate_dirs+=("${dir%%#*}")
    crate_versions+=("${id##*[#@]}")
done
if [ "$ALLOW_DIRTY" -eq 0 ]; then
    dirty=$(git status --porcelain -- "${crate_dirs[@]}" | grep -v " llama-cpp-sys/llama.cpp/" || true)
    if [ -n "$dirty" ]; then
        printf 'uncommitted changes in the packaged crates (pass --allow-dirty to package them anyway):\n%s\n' "$dirty" >&2
        exit 1
    fi
fi

echo "staging the llama.cpp subset of $PIN_PACKAGE $pin_version into $STAGE"
stage_llama_cpp
echo "  $(find "$STAGE" -type f | wc -l) files, $(du -sh "$STAGE" | cut -f1) unpacked"

args=()
for crate in "${CRATES[@]}"; do args+=(-p "$crate"); done
# One cargo invocation packages interdependent crates together: cargo resolves each
# package's dependencies on the others from the packages it has just made.
cargo package $VERIFY --locked --allow-dirty "${args[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
rm -rf "$OUT"
mkdir -p "$OUT"
for i in "${!CRATES[@]}"; do
    file="$target_dir/package/${CRATES[$i]}-${crate_versions[$i]}.crate"
    [ -f "$file" ] || { echo "cargo package made no $file" >&2; exit 1; }
    bytes=$(stat -c %s "$file")
    if [ "$bytes" -gt "$MAX_BYTES" ]; then
        echo "$file is $bytes bytes, over crates.io's limit of $MAX_BYTES" >&2
        exit 1
    fi
    cp "$file" "$OUT/"
    printf '%-40s %9d bytes\n' "${file##*/}" "$bytes"
done
echo "packages in $OUT"

# What the -sys package carries: the pin record, the licence, and none of the tests,
# tools, examples, docs or models of the llama.cpp tree.
for i in "${!CRATES[@]}"; do
    [ "${CRATES[$i]}" = llama-cpp-moe-sys ] || continue
    root="llama-cpp-moe-sys-${crate_versions[$i]}/llama.cpp"
    listing=$(tar tzf "$OUT/llama-cpp-moe-sys-${crate_versions[$i]}.crate")
    for needed in LLAMA_CPP_MOE_PIN.txt LICENSE CMakeLists.txt include/llama.h ggml/include/ggml.h; do
        grep -qxF "$root/$needed" <<<"$listing" || { echo "the -sys package lacks llama.cpp/$needed" >&2; exit 1; }
    done
    if grep -E "^$root/(tests|tools|examples|docs|models|common|gguf-py|grammars|pocs)/" <<<"$listing" | head -3 | grep .; then
        echo "the -sys package carries llama.cpp files its build does not use" >&2
        exit 1
    fi
done

case "$PUBLISH" in
    --dry-run) cargo publish --dry-run $VERIFY --locked --allow-dirty "${args[@]}" ;;
    upload) cargo publish $VERIFY --locked --allow-dirty "${args[@]}" ;;
esac
