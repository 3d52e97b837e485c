"""`llm-server perplexity` against llama-perplexity's figures for the same files, text and
settings (tests/golden/perplexity/, measured with llama.cpp b11549)."""
import json
import re

import pytest

from helpers import ROOT, real_models, run

GOLDEN = json.loads((ROOT / "tests/golden/perplexity/llama-perplexity-b11549.json").read_text())
WIKI = ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.mark.parametrize("case", GOLDEN["runs"], ids=lambda c: c["model"])
def test_perplexity_matches_llama_perplexity(case):
    found = [ROOT / case["path"]] if "path" in case else [m for m in real_models() if m.stem == case["model"]]
    if not found:
        pytest.skip(f"{case['model']} not fetched (scripts/fetch-models.py sets LLM_SERVER_MODELS)")
    out = run("perplexity", "-m", found[0], "-f", WIKI, "-c", case["ctx"], "--chunks", case["chunks"]).stdout
    ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", out).group(1))
    rel = ppl / case["ppl"] - 1
    print(f"{case['model']}: ours {ppl:.4f}, llama-perplexity {case['ppl']:.4f} ({rel:+.2%})")
    assert abs(rel) <= case["tolerance"]
