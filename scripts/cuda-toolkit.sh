#!/usr/bin/env bash
# Assembles a CUDA toolkit directory, without root, from NVIDIA's Python wheels on PyPI
# (nvcc, cudart, cuBLAS, the CCCL headers, the split-out crt headers and NVVM), and
# prints the CUDA_PATH to build `--features cuda` with. Enough to compile and link
# llama.cpp's CUDA backend; running it still needs an NVIDIA driver (libcuda.so.1).
#
# usage: scripts/cuda-toolkit.sh [DEST]
#   DEST defaults to $LLAMA_CPP_CUDA_TOOLKIT_DIR, else ~/.cache/llama-cpp-moe/cuda-<version>.
#   The wheels are cached in ~/.cache/llama-cpp-moe/cuda-wheels (LLAMA_CPP_CUDA_WHEEL_CACHE).
#   Idempotent: a DEST that is already complete is reused as it is.
#
# example:
#   export CUDA_PATH=$(scripts/cuda-toolkit.sh)
#   LLAMA_CPP_CUDA_ARCHITECTURES=90 cargo build --release -p llama-cpp-moe-sys --features cuda
#
# Only the last line of stdout is the path; progress goes to stderr.
set -euo pipefail

# CUDA 13.0 (what the driver of the GPU machines we test on supports). The wheels are
# versioned separately; these are the 13.0 releases of each that belong together.
CUDA_VERSION=13.0
WHEELS=(
    "nvidia-cuda-nvcc==13.0.88"    # nvcc, ptxas, fatbinary, nvlink, cudafe++
    "nvidia-cuda-crt==13.0.88"     # include/crt (host_config.h ...), split from nvcc in 13.x
    "nvidia-nvvm==13.0.88"         # cicc and libdevice, split from nvcc in 13.x
    "nvidia-cuda-runtime==13.0.96" # cudart headers and libcudart.so.13
    "nvidia-cuda-cccl==13.0.85"    # CUB/Thrust/libcu++ headers (include/cccl)
    "nvidia-cublas==13.0.2.14"     # cuBLAS/cuBLASLt headers and libraries
)

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/llama-cpp-moe
dest=${1:-${LLAMA_CPP_CUDA_TOOLKIT_DIR:-$cache_root/cuda-$CUDA_VERSION}}
wheel_cache=${LLAMA_CPP_CUDA_WHEEL_CACHE:-$cache_root/cuda-wheels}
stamp="$dest/.llama-cpp-moe-toolkit"
wanted="${WHEELS[*]}"

say() { echo "cuda-toolkit: $*" >&2; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -x "$dest/bin/nvcc" ]; then
    say "reusing $dest"
    echo "$dest"
    exit 0
fi

python=${PYTHON:-$(command -v python3 || command -v python || true)}
if [ -z "$python" ]; then
    say "needs python3 with pip (to download the wheels)"
    exit 1
fi
for tool in unzip; do
    command -v "$tool" >/dev/null || { say "needs $tool"; exit 1; }
done

# Download (or reuse) the wheels. --platform/--only-binary make pip fetch the Linux
# x86_64 wheel whatever Python runs this; --no-deps because the metapackages pull in
# the whole of CUDA.
mkdir -p "$wheel_cache"
missing=()
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    version=${spec##*==}
    file_prefix="${name//-/_}-$version-"
    if ! compgen -G "$wheel_cache/$file_prefix*.whl" >/dev/null; then
        missing+=("$spec")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "downloading ${missing[*]} into $wheel_cache"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --python-version 3.11 -d "$wheel_cache" "${missing[@]}" >&2
fi

# Unpack into a fresh directory next to DEST, then move it into place, so that an
# interrupted run never leaves a half-made toolkit that looks complete.
tmp="$dest.partial.$$"
rm -rf "$tmp"
mkdir -p "$tmp/unpack"
trap 'rm -rf "$tmp"' EXIT
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    version=${spec##*==}
    whl=$(compgen -G "$wheel_cache/${name//-/_}-$version-*.whl" | head -1)
    say "unpacking $(basename "$whl")"
    unzip -q -o "$whl" 'nvidia/*' -d "$tmp/unpack"
done
# Every CUDA 13 wheel installs under nvidia/cu13/{bin,include,lib,nvvm}: the layout of a
# toolkit root without the targets/<arch>/ indirection (its nvcc.profile expects that).
mv "$tmp/unpack/nvidia/cu13" "$tmp/root"
rm -rf "$tmp/unpack"
root="$tmp/root"
rm -rf "$root/.metadata"
chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true

# The wheels ship only the versioned sonames (libcudart.so.13); linkers look for the
# development names (libcudart.so), and nvcc.profile and CMake's FindCUDAToolkit look in lib64.
(
    cd "$root/lib"
    for lib in lib*.so.*; do
        dev_name=${lib%%.so.*}.so
        [ -e "$dev_name" ] || ln -s "$lib" "$dev_name"
    done
)
ln -s lib "$root/lib64"

# The toolkit's lib64/stubs/libcuda.so (the driver API, linked against when the driver is
# not installed) is not published as a wheel. llama-cpp-moe-sys avoids needing it: it
# builds the linked CUDA backend without the driver API (GGML_CUDA_NO_VMM), and the
# dynamic-backends module finds libcuda.so.1 at run time, on machines that have a driver.

"$root/bin/nvcc" --version >&2

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$root" "$dest"
echo "$wanted" >"$stamp"
say "CUDA $CUDA_VERSION toolkit ready in $dest"
echo "$dest"
