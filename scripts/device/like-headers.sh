#!/usr/bin/env bash
# Here: the headers of the small real test models (everything before their tensor data: metadata,
# tokenizer, tensor table) into devcarry/like/, a few MiB in all, for the GPU machine, which
# cannot receive the models themselves (the device's carry is 64 MiB). There
# `llm-server synth --like H -o M.gguf` writes a file of the same layout with random values
# (scripts/device/bench-small-models.sh). Models from scripts/fetch-models.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p devcarry/like
eval "$(.venv/bin/python scripts/fetch-models.py --print-env)"
IFS=: read -ra models <<< "$LLM_SERVER_MODELS"
for m in "${models[@]}"; do
    n=$(.venv/bin/python -c 'import sys; from gguf import GGUFReader; r = GGUFReader(sys.argv[1]); print(min(t.data_offset for t in r.tensors))' "$m")
    out="devcarry/like/$(basename "$m" .gguf).head"
    head -c "$n" "$m" > "$out"
    echo "$out: $n bytes of $(stat -c %s "$m")"
done
