#!/usr/bin/env bash
# On the GPU machine: every GPU test (the cuda crate's #[ignore]d tests: each op against the
# CPU backend, whole models against the CPU engine, graph replay against eager launches), on
# the demo model and tiny synthetic qwen35moe / qwen3moe / qwen3next files made here by
# `synth`; prints a pass/fail summary. Binaries come from scripts/device/bundle.sh (devcarry/bin).
# Env: GPU_TESTS (an extended regex: run only the test cases whose names match).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=devcarry/bin
OUT="${OUT:-/tmp/out}"
LOGS=/tmp/gpu-logs
mkdir -p "$OUT" /tmp/gpu-models "$LOGS"
export LLM_SERVER_ROOT="$PWD" LLM_SERVER_CUDA_CACHE=/tmp/cuda-cache RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"

models=()
for spec in "qwen35moe tiny f16" "qwen35moe tiny q4_k_m" "qwen3moe tiny q4_k_m" "qwen3next tiny q8_0"; do
    set -- $spec
    f="/tmp/gpu-models/$1-$2-$3.gguf"
    "$B/llm-server" synth --tokenizer devcarry/qwen3_6.tiktoken --arch "$1" --preset "$2" --mix "$3" -o "$f" > /dev/null 2>&1 && models+=("$f") \
        || echo "synth $spec failed"
done
export LLM_SERVER_GPU_MODELS="$(IFS=:; echo "${models[*]}")"

declare -A result
for t in "$B"/test-*; do
    name=$(basename "$t")
    for case in $("$t" --ignored --list 2>/dev/null | sed -n 's/: test$//p' | grep -E "${GPU_TESTS:-.}"); do
        if "$t" --ignored --exact "$case" --test-threads=1 --nocapture > "$LOGS/$name-$case.log" 2>&1; then
            result["$name::$case"]=PASS
        else
            result["$name::$case"]=FAIL
        fi
        grep -E "rel err|KL|PPL|panicked|error" "$LOGS/$name-$case.log" | tail -n 40
    done
done
echo
echo "== GPU test summary"
fails=0
for k in $(printf '%s\n' "${!result[@]}" | sort); do
    echo "${result[$k]}  $k"
    [ "${result[$k]}" = PASS ] || fails=$((fails + 1))
done
echo "$fails failed of ${#result[@]}"
tar czf "$OUT/gpu-test-logs.tgz" -C "$LOGS" . 2>/dev/null
[ "$fails" = 0 ]
