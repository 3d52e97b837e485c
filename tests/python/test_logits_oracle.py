"""Our logits against the live oracle: llama.cpp b11549 on the CPU (the xllamacpp wheel, called
through tools/logits-oracle's C shim), full distributions, on synthetic MoE files — whose
near-flat distributions a top-k golden file cannot represent.
"""
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import ROOT, binary, run

sys.path.insert(0, str(ROOT / "tools" / "logits-oracle"))
import logits as oracle  # noqa: E402

WIKI = ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw"
LLAMA_SRC = ROOT / ".cache" / "llama.cpp-b11549"

# (arch, mix) → (min top-1, max mean KL). F32 weights leave only summation order between the
# engines. Quantized: llama.cpp quantizes activations to Q8 blocks before each matmul and we do
# not yet (issue 3, requirement 6); these bounds guard today's figures until those kernels land.
CASES = {
    ("qwen35moe", "f32"): (1.0, 1e-6),
    ("qwen35moe", "q8_0"): (0.92, 1e-3),
    ("qwen35moe", "q4_k_m"): (0.88, 2e-3),
    ("qwen3moe", "f32"): (1.0, 1e-6),
    ("qwen3moe", "q8_0"): (0.95, 1e-3),
    ("qwen3next", "f32"): (1.0, 1e-6),
    ("qwen3next", "q8_0"): (0.89, 1.5e-3),
    ("qwen35", "f32"): (1.0, 1e-6),
}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if not (LLAMA_SRC / "include" / "llama.h").exists():
        pytest.skip(f"{LLAMA_SRC}/include/llama.h missing (scripts/test.sh unpacks it)")
    return oracle.load_lib(LLAMA_SRC, tmp_path_factory.mktemp("oracle"))


@pytest.mark.parametrize("arch,mix", sorted(CASES))
def test_synth_logits(arch, mix, lib, tmp_path):
    model = tmp_path / f"{arch}-tiny-{mix}.gguf"
    run("synth", "--arch", arch, "--preset", "tiny", "--mix", mix, "--router-skew", "1", "-o", model)
    text = WIKI.read_text(encoding="utf-8")[:4096] if WIKI.exists() else "The quick brown fox. " * 200
    ids, ref = oracle.oracle_logits(lib, str(model), text, 512, tmp_path)
    ours = oracle.our_logits(str(binary()), str(model), ids, tmp_path)
    top1, kl, kl_max = oracle.compare(ref, ours)
    print(f"{arch} tiny {mix}: {len(ids)} positions, top-1 {top1:.4f}, mean KL {kl:.3e}")
    min_top1, max_kl = CASES[(arch, mix)]
    assert len(ids) >= 512
    assert top1 >= min_top1 and kl <= max_kl, f"top-1 {top1:.4f} (≥ {min_top1}), KL {kl:.3e} (≤ {max_kl})"
