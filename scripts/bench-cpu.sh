#!/usr/bin/env bash
# Side-by-side CPU benchmark for BENCHMARKS.md: llama-bench and `llm-server bench`, same file,
# same thread count, same test (-p 512 -n 128), alternating per model so both see the same
# machine state. Prints both tables' rows and, at the end, our decode memory-bandwidth bound.
#
#   scripts/bench-cpu.sh LLAMA_BIN_DIR THREADS MODEL.gguf...
#     LLAMA_BIN_DIR  a CPU build of llama.cpp b11549 with llama-bench
#                    (tools/train-demo/README.md shows the build used here)
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${1:?llama.cpp bin dir}
THREADS=${2:?threads}
shift 2
OURS=target/release/llm-server
[ -x "$OURS" ] || cargo build --release --quiet
echo "date: $(date -u +%F\ %T) UTC; commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for m in "$@"; do
    echo "=== $m"
    "$LLAMA_BIN/llama-bench" -m "$m" -p 512 -n 128 -t "$THREADS" -r 3 -o md 2>/dev/null |
        grep -E "pp512|tg128" | sed 's/^/llama.cpp /'
    "$OURS" bench -m "$m" -p 512 -n 128 -t "$THREADS" -r 3 | grep -E "pp512|tg128|decode reads" |
        sed 's/^/ours      /'
done
