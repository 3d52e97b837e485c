#!/usr/bin/env bash
# On the GPU machine (issue 11 req. 3): with cards of several sizes emulated (hold-vram.py N),
# `--fit` (default target 1024 MiB) must keep the process's GPU memory within the card less the
# target through prefill at the full context and decode — and, on the last size, through a
# served load (`serve` with `bench --url` at 4 concurrent streams). GPU memory sampled every
# 0.1 s with nvidia-smi; peak minus the hold. Prints PASS/FAIL per size and a summary; exits 1
# on any failure.
#   scripts/device/vram-budget.sh MODEL [CTX=16384] [SIZES="8000 12000 16000"]
set -uo pipefail
cd "$(dirname "$0")/../.."
M=$1; CTX=${2:-16384}; SIZES=${3:-"8000 12000 16000"}
C=devcarry; B=$C/bin; TARGET=1024
export LLM_SERVER_CUDA_CACHE=${LLM_SERVER_CUDA_CACHE:-/tmp/cuda-cache}
fails=0; last=${SIZES##* }
for size in $SIZES; do
    python3 "$C/hold-vram.py" "$size" > /tmp/hold.log 2>&1 &
    hold=$!
    for _ in $(seq 60); do grep -q holding /tmp/hold.log && break; sleep 0.5; done
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
    ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.1; done ) > /tmp/vram.txt 2>/dev/null &
    sampler=$!
    timeout 150 "$B/llm-server" bench -m "$M" -ctk q8_0 -ctv q8_0 --device cuda --fit-ctx "$CTX" \
        -p "$CTX" -n 64 -r 1 --no-bandwidth 2>&1 | grep -E "placement|pp$CTX|tg64|rror" | sed "s/^/[$size MiB] /"
    ok=${PIPESTATUS[0]}
    if [ "$size" = "$last" ]; then
        "$B/llm-server" serve -m "$M" -c "$CTX" -ctk q8_0 -ctv q8_0 --port 18089 > /tmp/serve.log 2>&1 &
        srv=$!
        for _ in $(seq 120); do curl -sf localhost:18089/health > /dev/null && break; sleep 0.5; done
        timeout 120 "$B/llm-server" bench --url http://127.0.0.1:18089 --suite short,long \
            --concurrency 4 --requests 4 --max-tokens 32 -o /tmp/served.jsonl 2>&1 | tail -1 | sed "s/^/[$size MiB served] /"
        grep -c '"error":null' /tmp/served.jsonl | sed "s/^/[$size MiB served] requests without error: /"
        kill $srv; wait $srv 2>/dev/null
    fi
    kill $sampler; kill $hold; wait $hold 2>/dev/null
    peak=$(( $(sort -n /tmp/vram.txt | tail -1) - base ))
    limit=$(( size - TARGET ))
    if [ "$ok" = 0 ] && [ "$peak" -le "$limit" ]; then verdict=PASS; else verdict=FAIL; fails=$((fails + 1)); fi
    echo "$verdict card $size MiB: peak $peak MiB above the hold, limit $limit (card − fit target), bench exit $ok"
done
echo "== vram-budget: $fails failure(s)"
[ "$fails" = 0 ]
