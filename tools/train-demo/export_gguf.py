#!/usr/bin/env python3
"""Convert the demo checkpoint (transformers `Qwen3_5MoeForCausalLM`) into a `qwen35moe` GGUF.

Our own converter, written from spec/qwen35moe.md §2 (which summarises llama.cpp's
`conversion/qwen.py`, classes `Qwen3_5MoeTextModel` <- `_LinearAttentionVReorderBase` <-
`Qwen3NextModel`). gguf-py's `GGUFWriter` writes the bytes and its Q8_0 quantizer makes the
blocks; every name, shape, key and transform is chosen here:

- `*norm.weight` + 1 (HF's RMSNorm is zero-centred, `x̂·(1+w)`; ggml multiplies by w), except
  the DeltaNet gated norm `linear_attn.norm.weight`, which HF already applies as `x̂·w` (§2.3);
- `ssm_a = -exp(A_log)` (§2.3); `dt_bias` -> `ssm_dt.bias`;
- `conv1d.weight` [C, 1, K] squeezed to [C, K] (ggml ne {K, C}: taps contiguous per channel);
- experts' `gate_up_proj` [E, 2F, H] split into gate (rows 0..F) and up (rows F..2F);
  `down_proj` [E, H, F] as is (ggml ne {F, H, E}); per-expert checkpoints are stacked first;
- value heads of every DeltaNet layer permuted from HF's grouped order to llama.cpp's tiled
  order: GGUF v-head j = HF v-head (j mod Hk)·(Hv/Hk) + j div Hk (§2.4), applied to the V rows of
  `attn_qkv`, the V channels of `ssm_conv1d`, the rows of `attn_gate`, `ssm_alpha`, `ssm_beta`,
  `ssm_a`, `ssm_dt` and the input columns of `ssm_out`;
- `shared_expert_gate.weight` [1, H] -> `ffn_gate_inp_shexp.weight` {H};
- tied embeddings (`tie_word_embeddings`): no `output.weight`; llama.cpp's qwen35moe loader and
  our engine then use `token_embd` for the output projection, as HF's tied `lm_head` does;
- types: 1-D tensors, norms, the router `ffn_gate_inp` and `ssm_conv1d` stay F32 (as
  convert_hf_to_gguf.py and llama-quantize keep them, §2.3 and §3); every other weight gets
  `--outtype` (q8_0, f16 or f32) unless an `--override REGEX=TYPE` names it; rows that do not
  fill whole quant blocks fall back to F16, as in llama-quantize.

Metadata: the `qwen35moe.*` keys of §2.1 from config.json, and the tokenizer from tokenizer.json
(byte-level BPE: `gpt2` model, `qwen35` pre-tokenizer, tokens, token types, merges, EOS
`<|im_end|>`, PAD `<|vision_pad|>`, no BOS) with Qwen3.5's chat template.

Usage: export_gguf.py CKPT_DIR OUT.gguf [--outtype q8_0|f16|f32] [--override REGEX=TYPE]... [--tokenizer DIR]
"""
import argparse
import json
import re
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
ARCH = "qwen35moe"
OUTTYPES = {"q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
            "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
            "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32)}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def load_checkpoint(ckpt: Path) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint, as float32."""
    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        sys.exit(f"no *.safetensors in {ckpt}")
    out = {}
    for f in files:
        out.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    return out


def v_head_perm(hk: int, hv: int) -> np.ndarray:
    """perm[j] = HF v-head stored at GGUF v-head j (grouped -> tiled, spec §2.4)."""
    r = hv // hk
    return np.array([(j % hk) * r + j // hk for j in range(hv)])


def by_heads(x: np.ndarray, perm: np.ndarray, head_dim: int, axis: int) -> np.ndarray:
    """Reorder blocks of `head_dim` along `axis` by head permutation `perm`."""
    idx = (perm[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)
    return np.take(x, idx, axis=axis)


def expert_stacks(t: dict, e: str, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Routed experts as gate [E, F, H], up [E, F, H], down [E, H, F].

    transformers 5 holds them fused (`gate_up_proj` [E, 2F, H]: gate rows first, then up;
    `down_proj` [E, H, F]), as the Qwen3.5 checkpoints do; its `save_pretrained` writes them
    back per expert (`experts.{j}.gate_proj.weight` [F, H], ...). Both forms are read."""
    f = cfg["moe_intermediate_size"]
    if e + "gate_up_proj" in t:
        gate_up = t[e + "gate_up_proj"]
        return gate_up[:, :f], gate_up[:, f:], t[e + "down_proj"]
    n = cfg["num_experts"]
    return tuple(np.stack([t[f"{e}{j}.{w}.weight"] for j in range(n)])
                 for w in ("gate_proj", "up_proj", "down_proj"))


def convert_layer(t: dict, i: int, cfg: dict) -> list[tuple[str, np.ndarray]]:
    """GGUF tensors of decoder layer i, in llama.cpp's naming (spec §2.2)."""
    p = f"model.layers.{i}."
    b = f"blk.{i}."
    out = [(b + "attn_norm.weight", t[p + "input_layernorm.weight"] + 1),
           (b + "post_attention_norm.weight", t[p + "post_attention_layernorm.weight"] + 1)]
    if cfg["layer_types"][i] == "full_attention":
        a = p + "self_attn."
        out += [(b + "attn_q.weight", t[a + "q_proj.weight"]),      # per head [query ‖ gate]
                (b + "attn_k.weight", t[a + "k_proj.weight"]),
                (b + "attn_v.weight", t[a + "v_proj.weight"]),
                (b + "attn_output.weight", t[a + "o_proj.weight"]),
                (b + "attn_q_norm.weight", t[a + "q_norm.weight"] + 1),
                (b + "attn_k_norm.weight", t[a + "k_norm.weight"] + 1)]
    else:
        a = p + "linear_attn."
        hk, hv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
        dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
        key_dim = hk * dk
        perm = v_head_perm(hk, hv)
        qkv = t[a + "in_proj_qkv.weight"]                           # [2·key_dim + value_dim, H]
        qkv = np.concatenate([qkv[:2 * key_dim], by_heads(qkv[2 * key_dim:], perm, dv, 0)])
        conv = t[a + "conv1d.weight"][:, 0, :]                      # [conv_dim, K]
        conv = np.concatenate([conv[:2 * key_dim], by_heads(conv[2 * key_dim:], perm, dv, 0)])
        out += [(b + "attn_qkv.weight", qkv),
                (b + "attn_gate.weight", by_heads(t[a + "in_proj_z.weight"], perm, dv, 0)),
                (b + "ssm_conv1d.weight", conv),
                (b + "ssm_dt.bias", t[a + "dt_bias"][perm]),
                (b + "ssm_a", -np.exp(t[a + "A_log"])[perm]),
                (b + "ssm_beta.weight", t[a + "in_proj_b.weight"][perm]),
                (b + "ssm_alpha.weight", t[a + "in_proj_a.weight"][perm]),
                (b + "ssm_norm.weight", t[a + "norm.weight"]),        # no +1 (plain x̂·w in HF)
                (b + "ssm_out.weight", by_heads(t[a + "out_proj.weight"], perm, dv, 1))]
    m = p + "mlp."
    gate, up, down = expert_stacks(t, m + "experts.", cfg)
    out += [(b + "ffn_gate_inp.weight", t[m + "gate.weight"]),      # [E, H]
            (b + "ffn_gate_exps.weight", gate),
            (b + "ffn_up_exps.weight", up),
            (b + "ffn_down_exps.weight", down),
            (b + "ffn_gate_inp_shexp.weight", t[m + "shared_expert_gate.weight"].reshape(-1)),
            (b + "ffn_gate_shexp.weight", t[m + "shared_expert.gate_proj.weight"]),
            (b + "ffn_up_shexp.weight", t[m + "shared_expert.up_proj.weight"]),
            (b + "ffn_down_shexp.weight", t[m + "shared_expert.down_proj.weight"])]
    return out


def tensor_type(name: str, data: np.ndarray, qtype, overrides: list[tuple[re.Pattern, str]]):
    """F32 for what llama.cpp never quantises (spec §2.3/§3); else the first matching
    `--override`, else `qtype`. A row length that is no multiple of the type's block (the
    experts' down projection when the expert FFN is 16) falls back to F16, as llama-quantize's
    `tensor_type_fallback` does for 32-block types."""
    keep_f32 = (data.ndim < 2 or name.endswith("norm.weight") or ".ffn_gate_inp." in name
                or ".ssm_conv1d." in name)
    if keep_f32:
        return gguf.GGMLQuantizationType.F32
    ty = qtype
    for pattern, outtype in overrides:
        if pattern.search(name):
            ty = OUTTYPES[outtype][0]
            break
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[ty][0] != 0:
        return gguf.GGMLQuantizationType.F16
    return ty


def add_tokenizer(w: gguf.GGUFWriter, tok_dir: Path, n_vocab: int) -> None:
    tj = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tc = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens = [None] * n_vocab
    types = [TOKEN_NORMAL] * n_vocab
    for s, i in tj["model"]["vocab"].items():
        tokens[i] = s
    for at in tj["added_tokens"]:
        tokens[at["id"]] = at["content"]
        types[at["id"]] = TOKEN_CONTROL if at["special"] else TOKEN_USER_DEFINED
    if any(t is None for t in tokens):
        sys.exit("tokenizer does not fill the model's vocab")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {s: i for i, s in enumerate(tokens)}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen35")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(ids[tc["eos_token"]])
    w.add_pad_token_id(ids[tc["pad_token"]])
    w.add_add_bos_token(False)
    w.add_chat_template(tc["chat_template"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--outtype", choices=OUTTYPES, default="q8_0")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "models/demo-moe-tokenizer")
    ap.add_argument("--override", action="append", default=[], metavar="REGEX=TYPE",
                    help="store tensors whose GGUF name matches REGEX as TYPE (q8_0, f16, f32); repeatable")
    ap.add_argument("--name", default="demo-moe")
    args = ap.parse_args()
    overrides = []
    for o in args.override:
        pattern, _, outtype = o.rpartition("=")
        if outtype not in OUTTYPES or not pattern:
            sys.exit(f"bad --override {o!r}: want REGEX=TYPE with TYPE in {sorted(OUTTYPES)}")
        overrides.append((re.compile(pattern), outtype))
    cfg = json.loads((args.ckpt / "config.json").read_text())
    t = load_checkpoint(args.ckpt)
    qtype, ftype = OUTTYPES[args.outtype]
    rope = cfg["rope_parameters"]
    if not all(cfg["layer_types"][i] == ("full_attention" if (i + 1) % 4 == 0 else "linear_attention")
               for i in range(cfg["num_hidden_layers"])):
        sys.exit("layer pattern differs from full_attention_interval 4; write attention.recurrent_layers")

    w = gguf.GGUFWriter(str(args.out), ARCH)
    w.add_name(args.name)
    w.add_file_type(int(ftype))
    if args.outtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(int(cfg["head_dim"] * rope["partial_rotary_factor"]))
    w.add_rope_dimension_sections(list(rope["mrope_section"]) + [0])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_inner_size(cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"])
    w.add_ssm_state_size(cfg["linear_value_head_dim"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_full_attention_interval(4)
    add_tokenizer(w, args.tokenizer, cfg["vocab_size"])

    tensors = [("token_embd.weight", t["model.embed_tokens.weight"])]
    for i in range(cfg["num_hidden_layers"]):
        tensors += convert_layer(t, i, cfg)
    tensors.append(("output_norm.weight", t["model.norm.weight"] + 1))
    if not cfg.get("tie_word_embeddings", False):
        tensors.append(("output.weight", t["lm_head.weight"]))
    for name, data in tensors:
        ty = tensor_type(name, data, qtype, overrides)
        data = np.ascontiguousarray(data, dtype=np.float32)
        q = gguf.quants.quantize(data, ty)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {len(tensors)} tensors from {len(t)} checkpoint tensors, {size:,} bytes "
          f"({size / 2**20:.2f} MiB), {args.outtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
