#!/usr/bin/env bash
# scripts/bench.sh ENGINE CONFIG [THREADS] — start a server (ENGINE `ours` or `llama`) with the
# flags that benchmarks/configs.tsv gives CONFIG, wait until it is healthy, run the
# `llm-server bench --url` suites against it, write benchmarks/<date>-<engine>-<config>.jsonl,
# and stop the server whatever happens.
#
# Env: MODEL (GGUF; default the demo model for ours, required for llama), LLAMA_SERVER (path to
# llama-server), BIN (our binary; default target/release/llm-server, built if missing),
# SUITES (default short,medium,long,multi-turn), CONCURRENCY (default 1,4,16), REQUESTS,
# MAX_TOKENS (default 128), PORT (default a free one), OUT_DIR (default benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:?usage: scripts/bench.sh ours|llama CONFIG [THREADS]}"
config="${2:?usage: scripts/bench.sh ours|llama CONFIG [THREADS]}"
threads="${3:-}"
case "$engine" in ours|llama) ;; *) echo "engine must be ours or llama, not $engine" >&2; exit 2 ;; esac
flags="$(awk -F'\t' -v n="$config" -v e="$engine" '$1 == n && $2 == e { print $3; exit }' benchmarks/configs.tsv)"
[ -n "$flags" ] || { echo "no configuration $config for $engine in benchmarks/configs.tsv" >&2; exit 2; }
if [ -n "$threads" ]; then flags="$(echo "$flags" | sed -E "s/(^| )-t [0-9]+/\1-t $threads/")"; fi
BIN="${BIN:-target/release/llm-server}"
[ -x "$BIN" ] || cargo build --release --quiet -p llm-server
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
out_dir="${OUT_DIR:-benchmarks}"; mkdir -p "$out_dir"
out="$out_dir/$(date -u +%Y-%m-%d)-$engine-$config.jsonl"
log="$(mktemp)"
if [ "$engine" = ours ]; then
    model="${MODEL:-models/demo-moe-f16.gguf}"
    cmd=("$BIN" serve -m "$model" --host 127.0.0.1 --port "$port")
else
    model="${MODEL:?MODEL is required for llama}"
    cmd=("${LLAMA_SERVER:?LLAMA_SERVER is required for llama}" -m "$model" --host 127.0.0.1 --port "$port")
fi
# shellcheck disable=SC2206  # the configuration's flags are words
cmd+=($flags)
echo "starting: ${cmd[*]}" >&2
"${cmd[@]}" > "$log" 2>&1 &
pid=$!
stop() {
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap stop EXIT INT TERM
for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "the server exited before it was healthy:" >&2; tail -20 "$log" >&2; exit 1
    fi
    if curl -fsS "http://127.0.0.1:$port/health" > /dev/null 2>&1; then break; fi
    sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/health" > /dev/null || { echo "no /health after 300 s" >&2; exit 1; }
"$BIN" bench --url "http://127.0.0.1:$port" \
    --suite "${SUITES:-short,medium,long,multi-turn}" --concurrency "${CONCURRENCY:-1,4,16}" \
    ${REQUESTS:+--requests "$REQUESTS"} --max-tokens "${MAX_TOKENS:-128}" \
    --config-name "$config" --server-flags "$engine: ${cmd[*]}" --model-file "$model" -o "$out"
echo "$out"
