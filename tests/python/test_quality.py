"""`llm-server quality` (issue 13 req. 4): perplexity and KL divergence of files and KV cache
types against a reference, as the seed's matrix; resumable (the reference's distributions are
kept and reused); on the demo model and the small real models."""
import subprocess

import pytest

from helpers import ROOT, binary, real_models

DEMO = ROOT / "models" / "demo-moe-f16.gguf"
WIKI = ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def quality(*args, ok=True):
    p = subprocess.run([str(binary()), "quality", "-f", str(WIKI), "-c", "256", "--chunks", "4",
                        "-t", "2", "--device", "cpu", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    assert (p.returncode == 0) == ok, p.stderr
    return p


def rows(out):
    """{(model, kv): [PPL, ΔPPL %, mean KLD, 99.9% KLD, same top %]}"""
    table = {}
    for l in out.splitlines():
        cells = [c.strip() for c in l.strip("|").split("|")]
        if len(cells) == 7 and cells[0].endswith(".gguf"):
            table[(cells[0], cells[1])] = [float(c) for c in cells[2:]]
    return table


def test_demo_matrix_and_resume(tmp_path):
    args = ["-r", DEMO, "-m", DEMO, "--cache-types", "f16,q8_0,q4_0", "--work-dir", tmp_path,
            "--out-dir", tmp_path]
    first = quality(*args)
    assert "the reference's distributions →" in first.stderr
    t = rows(first.stdout)
    same = t[("demo-moe-f16.gguf", "f16")]
    # The reference against itself: nothing lost.
    assert same[1] == 0.0 and abs(same[2]) < 1e-5 and same[4] == 100.0
    q8, q4 = t[("demo-moe-f16.gguf", "q8_0")], t[("demo-moe-f16.gguf", "q4_0")]
    assert 0 < q8[2] < q4[2] and q8[4] > q4[4], t
    assert q4[3] > q4[2]  # the 99.9th percentile above the mean
    for f in ["quality-kld.svg", "quality-kld.png"]:
        assert (tmp_path / f).stat().st_size > 1000
    # A second run reuses the reference's distributions and gives the same figures.
    second = quality(*args)
    assert "reusing the reference's distributions" in second.stderr
    assert rows(second.stdout) == t


def test_real_models_kv_types_and_a_mismatched_reference(tmp_path):
    models = real_models()
    if not models:
        pytest.skip("no real models fetched (scripts/fetch-models.py sets LLM_SERVER_MODELS)")
    for m in models:
        t = rows(quality("-r", m, "--cache-types", "q8_0,q4_0", "--work-dir", tmp_path,
                         "--no-charts").stdout)
        q8, q4 = t[(m.name, "q8_0")], t[(m.name, "q4_0")]
        # Coarser KV types cost more, and never nothing.
        assert 0 < q8[2] < q4[2] and q8[4] >= q4[4], (m.name, t)
    # Another vocabulary than the reference's: a clear error.
    p = quality("-r", DEMO, "-m", models[0], "--work-dir", tmp_path, "--no-charts", ok=False)
    assert "vocabulary" in p.stderr.splitlines()[-1], p.stderr
