"""Shared helpers for the Python oracle tests: where our binary and the models are."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def binary() -> Path:
    """Our release binary (scripts/test.sh builds it and sets LLM_SERVER_BIN)."""
    path = Path(os.environ.get("LLM_SERVER_BIN", ROOT / "target" / "release" / "llm-server"))
    if not path.exists():
        pytest.fail(f"{path} not found: build with `cargo build --release` or set LLM_SERVER_BIN")
    return path


def real_models() -> list[Path]:
    """The real test models, from LLM_SERVER_MODELS (scripts/fetch-models.py --print-env)."""
    paths = [Path(p) for p in os.environ.get("LLM_SERVER_MODELS", "").split(os.pathsep) if p]
    return [p for p in paths if p.exists()]


def run(*args, **kw) -> subprocess.CompletedProcess:
    """Run our binary; fail the test with its stderr if it exits non-zero."""
    proc = subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"llm-server {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc
