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

# The shipped F16 file, plus F32 and Q8_0 exports of the same checkpoint: F32 isolates the
# conversion (it must match transformers to rounding), F16 and Q8_0 add their own rounding.
$PY tools/train-demo/export_gguf.py "$CKPT" models/demo-moe-f16.gguf --outtype f16
$PY tools/train-demo/export_gguf.py "$CKPT" "$WORK/demo-moe-f32.gguf" --outtype f32
$PY tools/train-demo/export_gguf.py "$CKPT" "$WORK/demo-moe-q8_0.gguf" --outtype q8_0

$PY tools/train-demo/verify_llama.py --ckpt "$CKPT" --llama-src "$LLAMA_SRC" --n 1024 --windows 4 \
    --chat "Hello, who are you?" --chat "Who gave the State of the Union address in 1862?" \
    --chat "Quote a few lines from Hamlet, Prince of Denmark." \
    models/demo-moe-f16.gguf "$WORK/demo-moe-f32.gguf" --json "$WORK/verify_f16_f32.json"
$PY tools/train-demo/verify_llama.py --ckpt "$CKPT" --llama-src "$LLAMA_SRC" --n 1024 --windows 4 --q8-ref \
    "$WORK/demo-moe-q8_0.gguf" --json "$WORK/verify_q8.json"

# Same windows as train.py's final figure (n_ctx 1024, second half of each window scored).
# Each log goes to a file first: the final line once went missing through a pipe.
for m in models/demo-moe-f16.gguf "$WORK/demo-moe-f32.gguf" "$WORK/demo-moe-q8_0.gguf"; do
    log="$WORK/perplexity-$(basename "$m" .gguf).log"
    "$LLAMA_BIN/llama-perplexity" -m "$m" -f .cache/train-demo/corpus/heldout.txt -c 1024 -b 1024 -t 2 >"$log" 2>&1
    echo "$m: $(grep -E "Final estimate" "$log")"
done
