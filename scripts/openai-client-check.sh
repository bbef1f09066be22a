#!/usr/bin/env bash
# Issue 21's acceptance check: the official `openai` Python client against the release
# moe_server on the real SmolLM2 (scripts/openai-client-check.py holds the assertions).
#
#   export LLAMA_CPP_MOE_SMOLLM2=$(bash scripts/fetch-smollm2.sh)
#   bash scripts/openai-client-check.sh
#   bash scripts/openai-client-check.sh --install-only   # step 1 alone (.ci/run's set-up)
#
# 1. pip installs `openai` and `jsonschema` into the model cache (`pip install --target`,
#    once; nothing is installed into the system's Python), keyed by the Python version;
# 2. starts target/release/moe_server (built if missing; $MOE_SERVER overrides) on
#    $LLAMA_CPP_MOE_SMOLLM2 with --api-key and --parallel 4 (n=3 needs free sequences),
#    waits for /health, runs the script, stops the server;
# 3. the same with --embedding --pooling mean, for /v1/embeddings.
# Exits non-zero when a check fails (the server's log is printed then).
set -euo pipefail
cd "$(dirname "$0")/.."
install_only=false
case "${1:-}" in
    "") ;;
    --install-only) install_only=true ;;
    *) echo "usage: $0 [--install-only]" >&2; exit 2 ;;
esac

if [ -n "${LLAMA_CPP_MOE_CACHE:-}" ]; then
    cache="$LLAMA_CPP_MOE_CACHE"
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
    cache="$XDG_CACHE_HOME/llama-cpp-moe"
else
    cache="${HOME:?neither LLAMA_CPP_MOE_CACHE nor HOME is set}/.cache/llama-cpp-moe"
fi
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site="$cache/openai-client-py$pyver"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c 'import openai, jsonschema' 2>/dev/null; then
    # --target installs beside the system's packages, never into them (and so needs no
    # --break-system-packages on an externally managed Python).
    rm -rf "$site.tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$site.tmp" "openai>=1.40,<4" "jsonschema>=4,<5" >&2
    rm -rf "$site"
    mv "$site.tmp" "$site"
    python3 -c 'import openai, jsonschema'
fi
if $install_only; then
    python3 -c 'import openai; print("openai", openai.__version__, "in", openai.__path__[0])'
    exit 0
fi

model="${LLAMA_CPP_MOE_SMOLLM2:?set LLAMA_CPP_MOE_SMOLLM2 (scripts/fetch-smollm2.sh prints it)}"
[ -s "$model" ] || { echo "openai-client-check: $model is missing or empty" >&2; exit 1; }
threads="${OPENAI_CHECK_THREADS:-2}"

server="${MOE_SERVER:-target/release/moe_server}"
if [ ! -x "$server" ]; then
    cargo build --release -q -p llama-cpp-moe-server --bin moe_server
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
key="openai-client-check-$RANDOM$RANDOM"

# GET /health over bash's /dev/tcp: prints the status line.
health() { # PORT
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    head -1 <&3
    exec 3<&-
}

# Starts moe_server with extra flags, runs the check script with extra flags, stops it.
serve_and_check() { # NAME "SERVER FLAGS" [SCRIPT FLAGS...]
    local name="$1" flags="$2"
    shift 2
    local log="$work/$name.log" port=""
    # shellcheck disable=SC2086
    "$server" -m "$model" --port 0 -t "$threads" -c 4096 --parallel 4 --api-key "$key" \
        $flags 2> "$log" &
    server_pid=$!
    for _ in $(seq 1 600); do
        port=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$log" | head -1)
        if [ -n "$port" ] && health "$port" 2>/dev/null | grep -q " 200 "; then break; fi
        kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "moe_server ($name) exited" >&2; exit 1; }
        sleep 0.2
    done
    health "$port" 2>/dev/null | grep -q " 200 " \
        || { cat "$log" >&2; echo "moe_server ($name) never became healthy" >&2; exit 1; }
    echo "moe_server ($name) on port $port"
    if ! python3 scripts/openai-client-check.py --base-url "http://127.0.0.1:$port/v1" \
        --api-key "$key" "$@"; then
        echo "--- moe_server ($name) log:" >&2
        cat "$log" >&2
        exit 1
    fi
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

serve_and_check generate ""
serve_and_check embedding "--embedding --pooling mean" --embeddings
echo "openai-client-check: all checks passed"
