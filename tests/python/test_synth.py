"""Synthetic qwen35moe files: exact layout (spec §2–3), and llama.cpp loads them."""
import json

import numpy as np
from gguf import GGUFReader

from helpers import run


def llama_server(path, n_ctx: int):
    """llama.cpp (xllamacpp, CPU, 2 threads, one slot) on `path`."""
    import xllamacpp as xl

    params = xl.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = 2
    params.warmup = False
    return xl.Server(params)


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
    server = llama_server(tiny_synth, 256)
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


def test_synth_like_copies_a_real_layout_from_its_header_alone(tmp_path):
    """`synth --like`: SmolLM2's layout (llama, Q4_1 with a Q8_0 embedding… whatever the file
    holds) from the first bytes of the file only, random values; llama.cpp and our engine both
    load and run the copy."""
    from helpers import real_models
    smol = [m for m in real_models() if m.name.startswith("SmolLM2")]
    assert smol, "SmolLM2 missing: run scripts/fetch-models.py"
    real = GGUFReader(str(smol[0]))
    cut = tmp_path / "smol.head"
    # Everything before the first tensor's data: the header and tensor table alone.
    first = min(t.data_offset for t in real.tensors)
    cut.write_bytes(smol[0].read_bytes()[:first])
    out = tmp_path / "smol-like.gguf"
    run("synth", "--like", cut, "-o", out, "-t", "2")
    copy = GGUFReader(str(out))
    assert [(t.name, t.tensor_type.name, list(t.shape)) for t in copy.tensors] == \
        [(t.name, t.tensor_type.name, list(t.shape)) for t in real.tensors]
    for key in ["general.architecture", "tokenizer.ggml.model", "tokenizer.chat_template",
                "llama.embedding_length", "llama.block_count"]:
        assert copy.fields[key].contents() == real.fields[key].contents(), key
    assert copy.fields["tokenizer.ggml.tokens"].contents() == real.fields["tokenizer.ggml.tokens"].contents()
    assert copy.fields["llm_server.synth.like"].contents() == "smol.head"
    assert abs(out.stat().st_size - smol[0].stat().st_size) < 4096
    # Different values, same kind of model: both engines run it.
    text = run("run", "-m", out, "-p", "Once upon a time", "-n", "8", "-t", "2", "--device", "cpu",
               "--temp", "0").stdout
    assert text.strip()
    res = llama_server(out, 128).handle_completions({"prompt": "Once upon a time", "n_predict": 4,
                                                "temperature": 0})
    assert "error" not in res, json.dumps(res)[:500]
