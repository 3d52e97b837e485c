#!/usr/bin/env bash
# Export the trained checkpoint to GGUF and check it against llama.cpp (README.md, "Reproduce").
#
#   tools/train-demo/verify.sh CKPT_DIR LLAMA_SRC LLAMA_BIN
#     CKPT_DIR   train.py's ckpt/ (default .cache/train-demo/ckpt)
#     LLAMA_SRC  llama.cpp b11549 source, for llama.h (the devcarry tarball unpacked)
#     LLAMA_BIN  folder with a CPU build of llama-perplexity of the same version
# Needs python with torch, transformers 5.17, gguf 0.19, safetensors, xllamacpp 2026.10.11549.
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT=${1:-.cache/train-demo/ckpt}
LLAMA_SRC=${2:?llama.cpp source dir}
LLAMA_BIN=${3:?llama.cpp bin dir}
PY=${PYTHON:-python3}
WORK=.cache/train-demo/gguf
mkdir -p "$WORK"

# The shipped file, plus F32 and F16 exports of the same checkpoint: F32 isolates the
# conversion (it must match transformers to rounding), F16 and Q8_0 add their own rounding.
$PY tools/train-demo/export_gguf.py "$CKPT" models/demo-moe-q8_0.gguf --outtype q8_0
$PY tools/train-demo/export_gguf.py "$CKPT" "$WORK/demo-moe-f32.gguf" --outtype f32
$PY tools/train-demo/export_gguf.py "$CKPT" "$WORK/demo-moe-f16.gguf" --outtype f16

$PY tools/train-demo/verify_llama.py --ckpt "$CKPT" --llama-src "$LLAMA_SRC" --n 1024 --windows 4 --q8-ref \
    --chat "Hello, who are you?" --chat "Who gave the State of the Union address in 1862?" \
    models/demo-moe-q8_0.gguf --json "$WORK/verify_q8.json"
$PY tools/train-demo/verify_llama.py --ckpt "$CKPT" --llama-src "$LLAMA_SRC" --n 1024 --windows 4 \
    "$WORK/demo-moe-f32.gguf" "$WORK/demo-moe-f16.gguf" --json "$WORK/verify_f32_f16.json"

# Same windows as train.py's final figure (n_ctx 1024, second half of each window scored).
"$LLAMA_BIN/llama-perplexity" -m models/demo-moe-q8_0.gguf -f .cache/train-demo/corpus/heldout.txt \
    -c 1024 -b 1024 2>&1 | grep -E "calculating|Final estimate"
