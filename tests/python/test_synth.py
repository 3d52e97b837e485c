"""Synthetic qwen35moe files: exact layout (spec §2–3), and llama.cpp loads them."""
import json

import numpy as np
from gguf import GGUFReader

from helpers import run


def test_tiny_synth_layout(tiny_synth):
    ref = GGUFReader(str(tiny_synth))
    f = ref.fields
    assert f["general.architecture"].contents() == "qwen35moe"
    assert f["tokenizer.ggml.pre"].contents() == "qwen35"
    assert len(f["tokenizer.ggml.tokens"].data) == 248320
    assert f["qwen35moe.rope.dimension_sections"].contents() == [3, 3, 2, 0]
    types = {t.name: t.tensor_type.name for t in ref.tensors}
    # Q4_K_M rules (spec §3): routers, norms and conv F32; output Q6_K; bumped ffn_down Q6_K.
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["blk.0.ssm_conv1d.weight"] == "F32"
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    # use_more_bits(i, 4) bumps layers 2 and 3 only.
    assert types["blk.3.ffn_down_exps.weight"] == "Q6_K"
    assert types["blk.0.ffn_down_exps.weight"] == "Q4_K"
    assert types["blk.0.ffn_gate_exps.weight"] == "Q4_K"
    tensors = {t.name: t for t in ref.tensors}
    ssm_a = np.asarray(tensors["blk.0.ssm_a"].data)
    assert (ssm_a < 0).all()
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data)
    assert np.all(np.abs(norm - 1) <= 0.1 + 1e-6)


def test_llamacpp_loads_tiny_synth(tiny_synth):
    """llama.cpp (xllamacpp, CPU) loads the file, tokenizes with its vocab and predicts with
    finite probabilities."""
    import xllamacpp as xl

    params = xl.CommonParams()
    params.model.path = str(tiny_synth)
    params.n_ctx = 256
    params.n_parallel = 1
    params.cpuparams.n_threads = 2
    params.warmup = False
    server = xl.Server(params)
    out = server.handle_completions(
        {"prompt": "The quick brown fox jumps over the lazy dog.", "n_predict": 4,
         "n_probs": 8, "temperature": 0}
    )
    assert "error" not in out, json.dumps(out)[:500]
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for step in content:
        lps = [c["logprob"] for c in step["top_logprobs"]]
        assert len(lps) == 8 and all(np.isfinite(lps)), lps
    assert out["usage"]["prompt_tokens"] > 5
