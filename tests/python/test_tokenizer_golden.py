"""Tokenizer goldens (tests/golden/tokenizer) are llama.cpp's ids for the current vocabularies.

The Rust tests compare our tokenizer with these goldens without llama.cpp; this checks that the
goldens themselves still equal what llama.cpp b11549 (the xllamacpp wheel) gives for the real
models and for the Qwen3.5 vocabulary `llm-server synth` writes today, then runs the Rust qwen35
test against that synth file (the Rust test alone skips qwen35 when no synth file is given).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, real_models

sys.path.insert(0, str(ROOT / "tools/tokenizer-golden"))
import golden  # noqa: E402

GOLDEN = ROOT / "tests/golden/tokenizer"


@pytest.fixture(scope="module")
def llama_lib(tmp_path_factory):
    ggml = os.environ.get("LLM_SERVER_GGML_SRC")
    src = Path(ggml).parent if ggml else None
    if src is None or not (src / "include/llama.h").exists():
        src = golden.default_llama_src()
    return golden.load_lib(src, tmp_path_factory.mktemp("llama-golden"))


def check_vocab(lib, model: Path, tmp: Path, vocab: str | None = None) -> int:
    vocab = vocab or golden.vocab_name(model)
    entries = [e for e in json.loads((GOLDEN / "manifest.json").read_text())["entries"] if e["vocab"] == vocab]
    assert entries, f"no goldens for {vocab}"
    for e in entries:
        text = ROOT / e["text"]
        assert hashlib.sha256(text.read_bytes()).hexdigest() == e["text_sha256"], f"{text} changed: rerun golden.py"
        out = tmp / f"{vocab}.u32"
        n = lib.tokenize_file(str(model).encode(), str(text).encode(), str(out).encode(),
                              int(e["add_special"]), int(e["parse_special"]))
        assert n == e["n_ids"], (vocab, e["ids"], n)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == e["ids_sha256"], f"{vocab} {e['ids']} is stale"
    return len(entries)


def test_goldens_match_llama_cpp_for_real_models(llama_lib, tmp_path):
    models = real_models()
    if not models:
        pytest.skip("LLM_SERVER_MODELS not set")
    assert sum(check_vocab(llama_lib, m, tmp_path) for m in models) >= 3 * len(models)
    smollm2 = next((m for m in models if golden.vocab_name(m) == "smollm2"), None)
    for pre in golden.DERIVED_PRE if smollm2 else []:
        derived = golden.derived_vocab(smollm2, pre, tmp_path)
        check_vocab(llama_lib, derived, tmp_path, f"smollm2-pre-{pre}")


def test_qwen35_synth_vocab(llama_lib, tiny_synth, tmp_path):
    check_vocab(llama_lib, tiny_synth, tmp_path)
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo not on PATH: the Rust qwen35 tokenizer test was not run")
    env = dict(os.environ, LLM_SERVER_QWEN35_GGUF=str(tiny_synth))
    proc = subprocess.run([cargo, "test", "--release", "-p", "engine", "--test", "tokenizer", "qwen35", "--",
                           "--nocapture"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "qwen35:" in proc.stdout and "ids identical" in proc.stdout, proc.stdout[-2000:]
