#!/usr/bin/env bash
# On the GPU machine (its 16 CPU cores): llama-perplexity (llama.cpp b11549, built here) and
# `llm-server perplexity` on the same GGUF files and WikiText-2 test text, same settings
# (-c 512, first N chunks, CPU only). Expects devcarry/: llm-server, llamacpp-b11549.tar.gz,
# llamacpp-device-build.sh, wiki.test.raw, and the models in devcarry/models/.
set -euo pipefail
C="${CARRY:-devcarry}"
OUT="${OUT:-/tmp/out}"
CHUNKS="${CHUNKS:-20}"
mkdir -p "$OUT"
TARGETS="llama-perplexity" JOBS=16 bash "$C/llamacpp-device-build.sh" "$C/llamacpp-b11549.tar.gz" /tmp/lcb > "$OUT/build.log" 2>&1 \
    || { tail -20 "$OUT/build.log"; exit 1; }
for m in "$C"/models/*.gguf; do
    name=$(basename "$m" .gguf)
    /tmp/lcb/bin/llama-perplexity -m "$m" -f "$C/wiki.test.raw" -c 512 --chunks "$CHUNKS" -t 16 -ngl 0 -b 512 \
        > "$OUT/$name.llamacpp.log" 2>&1 || true
    "$C/llm-server" perplexity -m "$m" -f "$C/wiki.test.raw" -c 512 --chunks "$CHUNKS" -t 16 \
        > "$OUT/$name.ours.log" 2>&1 || true
    theirs=$(grep -o "Final estimate: PPL = [0-9.]*" "$OUT/$name.llamacpp.log" | grep -o "[0-9.]*$" || echo nan)
    ours=$(grep -o "Final estimate: PPL = [0-9.]*" "$OUT/$name.ours.log" | grep -o "[0-9.]*$" || echo nan)
    secs=$(grep -o "[0-9.]* s$" "$OUT/$name.ours.log" | head -1)
    echo "$name: llama-perplexity $theirs, ours $ours ($secs)"
done
