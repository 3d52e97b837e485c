#!/usr/bin/env bash
# On the GPU machine (issue 10 req. 7, the small models): for each header in devcarry/like/
# (scripts/device/like-headers.sh), a file of that layout with random values
# (`synth --like`: the same tensors in the same types, tokenizer and template), then ours and
# llama.cpp b11549 whole on the GPU, same file: pp512 and tg128, -r 3. The values matter to no
# kernel, so the speeds are the real file's. llama-bench from $LLAMA_BENCH (built by the caller).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=devcarry/bin
export LLM_SERVER_CUDA_CACHE=${LLM_SERVER_CUDA_CACHE:-/tmp/cuda-cache}
for h in devcarry/like/*.head; do
    name=$(basename "$h" .head)
    m=/dev/shm/$name.gguf
    "$B/llm-server" synth --like "$h" -o "$m" 2>&1 | tail -1
    timeout 90 "$B/llm-server" bench -m "$m" --device cuda -ngl 99 -t 16 -p 512 -n 128 -r 3 --no-bandwidth 2>&1 \
        | grep -E "pp512|tg128" | sed "s/^/[ours $name] /"
    [ -n "${LLAMA_BENCH:-}" ] && timeout 90 "$LLAMA_BENCH" -m "$m" -ngl 99 -fa 1 -t 16 -p 512 -n 128 -r 3 -o md 2>/dev/null \
        | grep -E "pp512|tg128" | sed "s/^/[llama $name] /"
done
