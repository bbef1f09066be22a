#!/usr/bin/env bash
# Regenerates the README's per-architecture offload table: each synthetic `small` model
# loaded with -ngl all onto a loopback RPC device (ggml's rpc_server serving this CPU),
# without and with --cpu-moe. Prints a Markdown table on stdout.
#
# Client and server get one thread each: on a 2-core machine, two processes whose ggml
# thread pools both spin would steal each other's cores and distort the speeds.
#
#   bash scripts/moe-table.sh [N_PREDICT]
set -euo pipefail
cd "$(dirname "$0")/.."
n_predict="${1:-16}"
cargo build --release --example simple_moe --example rpc_server >&2
bin=target/release/examples
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

echo "| arch | RPC device bytes, no offload | with --cpu-moe | saved | decode tok/s, no offload | with --cpu-moe |"
echo "|---|---:|---:|---:|---:|---:|"
for arch in qwen3moe gpt-oss phimoe deepseek mixtral llama; do
    row=()
    for mode in none cpu-moe; do
        # A fresh server per run, so nothing of the previous model lingers there.
        "$bin/rpc_server" --host 127.0.0.1 --port "$port" --threads 1 >/dev/null 2>&1 &
        server=$!
        for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
        extra=()
        [ "$mode" = cpu-moe ] && extra=(--cpu-moe)
        "$bin/simple_moe" --synthetic "$arch:small" --rpc "127.0.0.1:$port" -ngl all -t 1 \
            -n "$n_predict" --json "${extra[@]}" >"/tmp/moe-table-$arch-$mode.json"
        kill "$server"; wait "$server" 2>/dev/null || true
    done
    python3 - "$arch" /tmp/moe-table-"$arch"-none.json /tmp/moe-table-"$arch"-cpu-moe.json <<'PY'
import json, sys
arch, a, b = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
rpc = lambda r: sum(p["model_bytes"] for p in r["placement"] if p["buft"].startswith("RPC"))
mib = lambda n: f"{n / 2**20:.1f} MiB"
saved = 1 - rpc(b) / rpc(a) if rpc(a) else 0.0
tps = lambda r: f'{r["timing"]["gen_tps"]:.1f}' if r["timing"]["gen_tps"] else "n/a"
print(f"| {arch} | {mib(rpc(a))} | {mib(rpc(b))} | {saved:.1%} | {tps(a)} | {tps(b)} |")
PY
done
