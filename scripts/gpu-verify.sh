#!/usr/bin/env bash
# MoE offload measured on one CUDA GPU, on a machine without cargo or network.
#
# Four ways to call it:
#
#   scripts/gpu-verify.sh --pack [PACK_DIR]
#       Here, with cargo: builds simple_moe, gguf_synth and rpc_server with
#       `--features dynamic-backends` (release, stripped) and packs them, their shared
#       libraries and the part of the pinned llama.cpp source that ggml's CUDA backend
#       needs to configure and build (xz) into PACK_DIR (default target/gpu-verify; must stay < 64 MiB).
#
#   scripts/gpu-verify.sh --run [PACK_DIR] [OUT_DIR]
#       On the GPU machine (nvcc, cmake, python3; no cargo; x86_64 Linux with glibc >= 2.34
#       and GCC >= 11's libstdc++, what the packed binaries need when built on Debian 12):
#       builds only ggml's CUDA backend module from the packed source (GGML_BACKEND_DL,
#       arch $GPU_VERIFY_ARCH, default 90, -j$(nproc)), writes the full-size
#       synthetic gpt-oss-20b (MXFP4) and Qwen3-30B-A3B (Q4_0) to local disk while that
#       compiles, then runs `simple_moe --json -ngl all` with the routed experts of no
#       layer, all layers (--cpu-moe), the first half (--n-cpu-moe) and the last half
#       (--cpu-moe-layers) in host RAM, and as `--fit` plans them for a device budget of
#       $GPU_VERIFY_FIT_BUDGET_MIB (default 8192 MiB; in a rehearsal, what the planner
#       says the device needs without offload, less half of its weights). OUT_DIR (default $OUT, else target/gpu-verify-out)
#       gets every run's JSON, summary.json (device/host bytes, load, TTFT, prefill and
#       decode tok/s, greedy tokens identical to the no-offload run or not) and the log.
#       Stops starting runs after $GPU_VERIFY_BUDGET_S seconds (default 480).
#
#   scripts/gpu-verify.sh --summarize OUT_DIR
#       Rewrites summary.json and the table from the runs' JSON in OUT_DIR.
#
#   scripts/gpu-verify.sh --rehearse
#       The whole thing here on the CPU: --pack, then --run with the CUDA build skipped,
#       `-ngl all` onto a loopback RPC device (the packed rpc_server) and the `small`
#       presets (GPU_VERIFY_REHEARSE_PRESET=tiny for a quicker one; GPU_VERIFY_PROFILE=dev
#       reuses a debug dynamic-backends build). Exits non-zero if any step or run fails.
#
# The GPU run, from this repository on the machine that has cargo:
#   scripts/gpu-verify.sh --pack
#   (on the GPU machine, with target/gpu-verify carried over)  scripts/gpu-verify.sh --run
set -euo pipefail
cd "$(dirname "$0")/.."
rpc_pid=""

mode=${1:---run}
shift || true

log() { echo "gpu-verify [$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

pack() {
    local pack_dir=${1:-target/gpu-verify}
    local target_dir=${GPU_VERIFY_TARGET_DIR:-target/dynamic-backends}
    # release for the GPU run; CI rehearses with dev, which shares the C++ build of its
    # dynamic-backends tests (llama.cpp is a Release build in every profile).
    local profile=${GPU_VERIFY_PROFILE:-release}
    local out_sub=$profile
    [ "$profile" = dev ] && out_sub=debug
    log "building the $profile binaries with --features dynamic-backends into $target_dir"
    # The default-feature prebuilt libraries cannot serve a dynamic-backends build.
    env -u LLAMA_CPP_PREBUILT_DIR cargo build --profile "$profile" -q -p llama-cpp-moe-examples \
        --features dynamic-backends --target-dir "$target_dir" \
        --example simple_moe --example gguf_synth --example rpc_server
    target_dir=$target_dir/$out_sub

    rm -rf "$pack_dir"
    mkdir -p "$pack_dir/bin"
    local exe
    for exe in simple_moe gguf_synth rpc_server; do
        cp "$target_dir/examples/$exe" "$pack_dir/bin/"
    done
    # The build's version.rs names the llama.cpp source and the install prefix.
    local version_rs src lib_dir
    version_rs=$(ls -t "$target_dir"/build/llama-cpp-moe-sys-*/out/version.rs | head -1)
    src=$(sed -n 's/^pub const LLAMA_CPP_SOURCE_DIR: &str = "\(.*\)";$/\1/p' "$version_rs")
    lib_dir=$(sed -n 's/^pub const LLAMA_CPP_INSTALL_DIR: &str = "\(.*\)";$/\1/p' "$version_rs")/lib
    # The shared libraries and the backend modules: ggml looks for modules in the
    # executable's directory, so everything goes into bin/.
    [ -f "$lib_dir/libllama.so" ] || die "no libllama.so in '$lib_dir'"
    cp -P "$lib_dir"/lib*.so* "$pack_dir/bin/"
    strip --strip-unneeded "$pack_dir"/bin/*
    # Sources for the CUDA (and a native CPU) module: ggml alone, without the other
    # GPU backends.
    [ -d "$src/ggml/src/ggml-cuda" ] || die "no llama.cpp source with ggml-cuda at '$src'"
    local exclude=()
    local d
    for d in "$src"/ggml/src/ggml-*/; do
        case $(basename "$d") in
            ggml-cuda | ggml-cpu | ggml-rpc) ;;
            *) exclude+=(--exclude="ggml/src/$(basename "$d")") ;;
        esac
    done
    # ggml's own CMakeLists cannot configure alone from the packaged source (no
    # ggml.pc.in), so the module is built through llama.cpp's top level, as build.rs does.
    tar -C "$src" "${exclude[@]}" -cJf "$pack_dir/llama.cpp-src.tar.xz" \
        CMakeLists.txt LICENSE cmake include src vendor ggml
    {
        echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "source $src"
    } >"$pack_dir/MANIFEST"
    local size
    size=$(du -sbL "$pack_dir" | cut -f1)
    log "packed $pack_dir: $((size / 1024 / 1024)) MiB ($size bytes)"
    ls -la "$pack_dir" "$pack_dir/bin" >&2
    [ "$size" -lt $((64 * 1024 * 1024)) ] || die "the pack is over 64 MiB"
}

# Builds ggml's CUDA backend module from the packed source into $1/modules, with the
# options build.rs uses for `dynamic-backends` (the carried CPU module stays: ggml
# refuses GGML_NATIVE with GGML_BACKEND_DL).
build_modules() {
    local work=$1 pack_dir=$2
    local arch=${GPU_VERIFY_ARCH:-90}
    rm -rf "$work/src" "$work/modules"
    mkdir -p "$work/src" "$work/modules"
    tar -C "$work/src" -xJf "$pack_dir/llama.cpp-src.tar.xz"
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    local off=()
    local opt
    for opt in LLAMA_BUILD_TESTS LLAMA_BUILD_TOOLS LLAMA_BUILD_EXAMPLES LLAMA_BUILD_SERVER \
        LLAMA_BUILD_APP LLAMA_BUILD_COMMON LLAMA_BUILD_UI LLAMA_OPENSSL LLAMA_CURL \
        LLAMA_SUBPROCESS GGML_BUILD_TESTS GGML_BUILD_EXAMPLES GGML_CCACHE GGML_NATIVE; do
        off+=("-D$opt=OFF")
    done
    local defs=("${gen[@]}" "${off[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON
        -DGGML_BACKEND_DL=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch"
        -DGGML_RPC=ON -DGGML_OPENMP=ON)
    # A toolkit without libcuda's stub (pip wheels) cannot link ggml's VMM pool.
    if ! cmake -S "$work/src" -B "$work/build" "${defs[@]}"; then
        log "configure failed; retrying with GGML_CUDA_NO_VMM=ON"
        rm -rf "$work/build"
        cmake -S "$work/src" -B "$work/build" "${defs[@]}" -DGGML_CUDA_NO_VMM=ON
    fi
    cmake --build "$work/build" --target ggml-cuda -j "$(nproc)"
    find "$work/build" -name 'libggml-cuda.so' -exec cp {} "$work/modules/" \;
    [ -f "$work/modules/libggml-cuda.so" ]
}

# Reads the runs' JSON in $1 and writes summary.json plus a table; fails when a run is
# missing or put nothing on the accelerator.
summarize() {
    python3 - "$1" "${2:-0}" <<'PY'
import glob, json, os, sys

out, rehearse = sys.argv[1], sys.argv[2] == "1"
order = ["none", "cpu-moe", "n-cpu-moe-half", "cpu-moe-layers-last-half", "fit"]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path)[:-5]
    placement = next((p for p in order if name.endswith("-" + p)), None)
    if placement is None:
        continue
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError):
        continue
    runs.setdefault(name[: -len(placement) - 1], {})[placement] = j

summary = {"rehearsal": rehearse, "models": {}}
ok = True
for model, by_placement in runs.items():
    base = by_placement.get("none")
    rows = []
    for placement in order:
        j = by_placement.get(placement)
        if j is None:
            ok = False
            rows.append({"placement": placement, "missing": True})
            continue
        # Weight bytes per buffer type from the per-tensor placement (the memory
        # breakdown counts a mapped file's whole range). Host memory: every CPU buffer
        # type (CPU, CPU_Mapped, CPU_REPACK) and pinned ones (CUDA_Host).
        def on_host(buft):
            return buft.startswith("CPU") or buft.endswith("_Host")
        by_buft = {t["buft"]: t["bytes"] for t in j["tensors_by_buft"]}
        device = {b: n for b, n in by_buft.items() if not on_host(b)}
        host = sum(n for b, n in by_buft.items() if on_host(b))
        t = j["timing"]
        same = base is not None and j["tokens"] == base["tokens"]
        first_diff = None
        if base is not None and not same:
            first_diff = next(
                (i for i, (a, b) in enumerate(zip(j["tokens"], base["tokens"])) if a != b),
                min(len(j["tokens"]), len(base["tokens"])),
            )
        rows.append({
            "placement": placement,
            "cpu_moe_layers": j["offload"]["cpu_moe_layers"],
            "device_model_bytes": device,
            "host_model_bytes": host,
            "device_bytes_saved": j["device_bytes_saved"],
            "load_ms": t["load_ms"],
            "ttft_ms": t["ttft_ms"],
            "prompt_tokens": t["prompt_tokens"],
            "prefill_tps": t["prompt_tps"],
            "gen_tokens": t["gen_tokens"],
            "decode_tps": t["gen_tps"],
            "tokens_identical_to_none": same,
            "first_differing_token": first_diff,
        })
        if not device or sum(device.values()) == 0:
            ok = False  # -ngl all put nothing on the accelerator
    summary["models"][model] = rows

if not runs:
    ok = False
summary["ok"] = ok
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)

def mib(b):
    return f"{b / 2**20:.0f}"

for model, rows in summary["models"].items():
    print(f"\n{model}")
    print(f"{'placement':<26} {'device MiB':>10} {'host MiB':>9} {'load ms':>8} {'TTFT ms':>8} "
          f"{'prefill t/s':>11} {'decode t/s':>10}  same tokens")
    for r in rows:
        if r.get("missing"):
            print(f"{r['placement']:<26} (missing)")
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
        print(f"{r['placement']:<26} {mib(sum(r['device_model_bytes'].values())):>10} "
              f"{mib(r['host_model_bytes']):>9} {r['load_ms']:>8.0f} {fmt(r['ttft_ms']):>8} "
              f"{fmt(r['prefill_tps']):>11} {fmt(r['decode_tps']):>10}  "
              f"{r['tokens_identical_to_none']}"
              + ("" if r["first_differing_token"] is None
                 else f" (from token {r['first_differing_token']})"))
print("\nsummary:", "ok" if ok else "INCOMPLETE")
sys.exit(0 if ok else 1)
PY
}

run() {
    local pack_dir=${1:-target/gpu-verify}
    local out=${2:-${OUT:-target/gpu-verify-out}}
    local rehearse=${GPU_VERIFY_REHEARSE:-0}
    local budget=${GPU_VERIFY_BUDGET_S:-480}
    local started=$SECONDS
    pack_dir=$(cd "$pack_dir" && pwd)
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    exec > >(tee -a "$out/gpu-verify.log") 2>&1
    log "pack $pack_dir ($(du -sbL "$pack_dir" | cut -f1) bytes), out $out, rehearse=$rehearse"
    cat "$pack_dir/MANIFEST" || true

    local work=${GPU_VERIFY_WORK:-/tmp/gpu-verify-work}
    rm -rf "$work/bin"
    mkdir -p "$work"
    cp -a "$pack_dir/bin" "$work/bin"
    local bin=$work/bin
    export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

    local presets=(gpt-oss:full:mxfp4 qwen3moe:full:q4_0)
    local synth_pid=""
    local models=$work/models
    mkdir -p "$models"
    if [ "$rehearse" = 1 ]; then
        local size=${GPU_VERIFY_REHEARSE_PRESET:-small}
        presets=("gpt-oss:$size:mxfp4" "qwen3moe:$size:q4_0")
    fi

    # The models are written while the CUDA module compiles: one core for gguf_synth.
    (
        for p in "${presets[@]}"; do
            IFS=: read -r arch preset type <<<"$p"
            f="$models/$arch-$preset-$type.gguf"
            [ -s "$f" ] && continue
            t0=$SECONDS
            "$bin/gguf_synth" --arch "$arch" --preset "$preset" --type "$type" --seed 1 \
                -o "$f.tmp" >/dev/null && mv "$f.tmp" "$f"
            echo "gguf_synth $arch $preset $type: $((SECONDS - t0)) s, $(stat -c %s "$f") bytes"
        done
    ) >"$out/synth.log" 2>&1 &
    synth_pid=$!

    local device_flag=()
    if [ "$rehearse" = 1 ]; then
        log "rehearsal: no CUDA build; -ngl goes to a loopback RPC server"
        local port=$((50100 + RANDOM % 500))
        "$bin/rpc_server" --host 127.0.0.1 --port "$port" >"$out/rpc_server.log" 2>&1 &
        rpc_pid=$!
        trap 'kill "$rpc_pid" 2>/dev/null || true' EXIT
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.2
        done
        device_flag=(--rpc "127.0.0.1:$port")
    else
        nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv |
            tee "$out/gpu.csv"
        nvcc --version | tail -2
        local t0=$SECONDS
        if build_modules "$work" "$pack_dir" >"$out/cuda-build.log" 2>&1; then
            log "CUDA module built in $((SECONDS - t0)) s"
            cp "$work"/modules/*.so "$bin/"
        else
            tail -30 "$out/cuda-build.log"
            die "building the CUDA module failed after $((SECONDS - t0)) s (see cuda-build.log)"
        fi
        echo "{\"cuda_module_build_s\": $((SECONDS - t0))}" >"$out/cuda-build.json"
    fi

    "$bin/simple_moe" --list-devices "${device_flag[@]}" | tee "$out/devices.txt"
    if [ "$rehearse" != 1 ]; then
        grep -q '^CUDA0' "$out/devices.txt" || die "no CUDA0 device (see devices.txt)"
    fi

    wait "$synth_pid" || { cat "$out/synth.log"; die "gguf_synth failed"; }
    cat "$out/synth.log"

    # A prompt long enough for a prefill rate: about 300 tokens.
    local prompt
    prompt=$(printf 'The quick brown fox jumps over the lazy dog near the river bank. %.0s' $(seq 25))
    local failures=0
    local p
    for p in "${presets[@]}"; do
        IFS=: read -r arch preset type <<<"$p"
        local f="$models/$arch-$preset-$type.gguf"
        local n_layer=""
        local placement
        local fit_budget=${GPU_VERIFY_FIT_BUDGET_MIB:-}
        for placement in none cpu-moe n-cpu-moe-half cpu-moe-layers-last-half fit; do
            if [ $((SECONDS - started)) -ge "$budget" ]; then
                log "time budget ($budget s) spent: skipping $arch $placement"
                continue
            fi
            local flags=()
            case $placement in
                none) ;;
                cpu-moe) flags=(--cpu-moe) ;;
                n-cpu-moe-half) flags=(--n-cpu-moe "$((n_layer / 2))") ;;
                cpu-moe-layers-last-half)
                    flags=(--cpu-moe-layers "$((n_layer / 2))-$((n_layer - 1))") ;;
                fit) flags=(--fit --fit-budget "${fit_budget:-8192}") ;;
            esac
            local json="$out/$arch-$preset-$type-$placement.json"
            log "$arch $preset $type: $placement ${flags[*]}"
            # A run may overrun the budget by a minute at most, so the summary still
            # gets written inside a 10-minute command.
            local left=$((budget + 60 - (SECONDS - started)))
            if timeout "$((left < 240 ? left : 240))" "$bin/simple_moe" -m "$f" -ngl all "${device_flag[@]}" "${flags[@]}" \
                --json --temp 0 -n 32 -c 4096 -p "$prompt" >"$json" 2>"$json.stderr"; then
                if [ -z "$n_layer" ]; then
                    n_layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["n_layer"])' "$json")
                fi
                if [ "$placement" = none ] && [ "$rehearse" = 1 ] && [ -z "${GPU_VERIFY_FIT_BUDGET_MIB:-}" ]; then
                    # The rehearsal's models fit any real budget: ask the planner what
                    # the device needs without offload and allow that less half its
                    # weights, so the plan moves experts as 8 GiB does on the GPU (the
                    # budget is whole MiB: the tiny models' experts are smaller).
                    fit_budget=$("$bin/simple_moe" -m "$f" -ngl all "${device_flag[@]}" -c 4096 \
                        --plan --json --fit-budget 1000000 2>/dev/null | python3 -c 'import json,math,sys
d = json.load(sys.stdin)["devices"][0]["predicted"]
print(math.ceil((d["total_bytes"] - d["model_bytes"] / 2) / 2**20))')
                fi
            else
                log "run failed (rc $?): $(tail -3 "$json.stderr")"
                failures=$((failures + 1))
                [ -n "$n_layer" ] || break
            fi
        done
    done

    summarize "$out" "$rehearse" || failures=$((failures + 1))
    log "done in $((SECONDS - started)) s; $failures failure(s); results in $out"
    [ "$failures" -eq 0 ]
}

case $mode in
    --pack) pack "$@" ;;
    --run) run "$@" ;;
    --summarize) summarize "$@" ;;
    --rehearse)
        pack target/gpu-verify
        rm -rf "${1:-target/gpu-verify-rehearsal}"
        GPU_VERIFY_REHEARSE=1 GPU_VERIFY_WORK=${GPU_VERIFY_WORK:-target/gpu-verify-rehearsal-work} \
            run target/gpu-verify "${1:-target/gpu-verify-rehearsal}"
        ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) die "unknown mode $mode (use --pack, --run or --rehearse)" ;;
esac
