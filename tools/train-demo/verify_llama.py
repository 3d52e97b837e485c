#!/usr/bin/env python3
"""Check the exported GGUFs against the transformers checkpoint, with llama.cpp itself.

1. Tokenization: llama.cpp (pre-tokenizer `qwen35`, our merges) must give the same ids on the
   whole held-out text as the HF tokenizer did (.train-carry/heldout_ids.u16).
2. Logits: transformers `Qwen3_5MoeForCausalLM` (fp32 on the CPU, the fp16-stored checkpoint)
   and llama.cpp (CPU, the `xllamacpp` wheel's llama.cpp b11549, F32 KV cache, no flash
   attention) run the same held-out windows of N tokens, each as one sequence from position 0.
   Per GGUF we report top-1 agreement, mean and max KL(transformers || llama.cpp) over all
   positions, the largest absolute logit difference and both models' perplexity on the tokens.
   With --q8-ref, also against transformers on the checkpoint rounded through Q8_0, which
   separates the Q8_0 rounding of the weights from llama.cpp's own arithmetic (its Q8_0 dot
   products also round the activations to 8 bits).

The llama.cpp side goes through llama_logits.c (built here with gcc against llama.h of the same
llama.cpp version; see tools/vocab-check for why a shared library and not an executable).

3. With --chat PROMPT: llama.cpp's greedy answer on the first GGUF, which shows that the file's
   end-of-generation tokens stop the answer at `<|im_end|>`.

Usage: verify_llama.py --ckpt DIR --llama-src DIR GGUF... [--n 1024] [--windows K] [--q8-ref]
                       [--chat PROMPT]... [--json OUT]
"""
import argparse
import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def build_shim(llama_src: Path, out: Path):
    import xllamacpp
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{llama_src}/include", f"-I{llama_src}/ggml/include",
                    str(HERE / "llama_logits.c"), "-o", str(out)], check=True)
    ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(out))
    lib.llama_logits.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
                                 ctypes.c_int32, ctypes.POINTER(ctypes.c_float)]
    lib.llama_logits.restype = ctypes.c_int32
    lib.llama_tok.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32,
                              ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]
    lib.llama_tok.restype = ctypes.c_int32
    lib.llama_greedy.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32]
    lib.llama_greedy.restype = ctypes.c_int32
    return lib


def chat_answers(lib, gguf_path: Path, prompts: list[str]) -> list[dict]:
    """Greedy answers through llama.cpp, the prompt rendered as Qwen3.5's template does with
    `enable_thinking=false`: shows the file's EOG tokens stop generation at `<|im_end|>`."""
    rows = []
    for p in prompts:
        text = f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        buf = ctypes.create_string_buffer(8192)
        n = lib.llama_greedy(str(gguf_path).encode(), text.encode(), 96, buf, len(buf))
        rows.append({"prompt": p, "answer": buf.value.decode("utf-8", "replace"), "tokens": n})
        print(f"llama.cpp chat {p!r} -> {rows[-1]['answer']!r} ({n} tokens{', stopped at EOG' if n < 96 else ''})")
    return rows


def q8_round(model) -> None:
    """Round, in place, every weight that export_gguf.py stores as Q8_0 through Q8_0 and back
    (gguf-py's reference quantizer), so the model holds exactly the Q8_0 file's weights.
    Blocks of 32 run along the input dimension (the last axis) in HF and in GGUF alike; the
    V-head reorder moves whole rows, or in ssm_out whole 32-column blocks, so it commutes.
    Rows shorter than a block (the experts' down projection with an expert FFN of 16) stay
    F16 in the file, as the checkpoint already holds them."""
    import gguf
    import torch
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, p in model.named_parameters():
        if p.ndim < 2 or name.endswith("mlp.gate.weight") or "conv1d" in name or "shared_expert_gate" in name:
            continue
        if p.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] != 0:
            continue
        a = p.detach().numpy().reshape(-1, p.shape[-1])
        p.data = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, q8), q8).reshape(p.shape))


def hf_logits(ckpt: Path, tokens: np.ndarray, q8: bool = False) -> np.ndarray:
    import torch
    from transformers import Qwen3_5MoeForCausalLM
    model = Qwen3_5MoeForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    if q8:
        q8_round(model)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64))[None], use_cache=False)
    return out.logits[0].float().numpy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def stats(ref: np.ndarray, got: np.ndarray, tokens: np.ndarray) -> dict:
    """Per-position arrays: top-1 match, KL(ref || got), and both models' next-token NLL."""
    lp, lq = log_softmax(ref), log_softmax(got)
    pos = np.arange(len(tokens) - 1)
    return {"top1": ref.argmax(-1) == got.argmax(-1), "kl": (np.exp(lp) * (lp - lq)).sum(-1),
            "dlogit": np.abs(ref - got).max(-1),
            "nll_ref": -lp[pos, tokens[1:]], "nll_got": -lq[pos, tokens[1:]]}


def summary(parts: list[dict]) -> dict:
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return {"positions": int(len(cat["top1"])), "top1_agreement": float(cat["top1"].mean()),
            "kl_mean": float(cat["kl"].mean()), "kl_max": float(cat["kl"].max()),
            "max_abs_logit_diff": float(cat["dlogit"].max()),
            "ppl_reference": float(np.exp(cat["nll_ref"].mean())), "ppl_llama": float(np.exp(cat["nll_got"].mean()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", nargs="+", type=Path)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source of the wheel's version (llama.h)")
    ap.add_argument("--heldout", type=Path, default=REPO / ".cache/train-demo/corpus/heldout.txt")
    ap.add_argument("--ids", type=Path, default=REPO / ".train-carry/heldout_ids.u16")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--offset", type=int, default=0, help="start of the window when --windows is 1")
    ap.add_argument("--windows", type=int, default=1, help="windows of --n tokens, evenly spaced over the held-out ids")
    ap.add_argument("--q8-ref", action="store_true",
                    help="also compare with transformers on the checkpoint rounded through Q8_0 (for a Q8_0 file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chat", action="append", default=[], metavar="PROMPT",
                    help="also answer PROMPT greedily with llama.cpp on the first GGUF; repeatable")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    lib = build_shim(args.llama_src, Path("/tmp/libllama_logits.so"))
    ids = np.fromfile(args.ids, dtype="<u2").astype(np.int32)
    report = {}

    text = args.heldout.read_bytes()
    buf = (ctypes.c_int32 * (len(text) + 16))()
    n = lib.llama_tok(str(args.gguf[0]).encode(), text, len(text), buf, len(buf))
    lt = np.frombuffer(buf, dtype=np.int32, count=max(n, 0))
    same = n == len(ids) and bool((lt == ids).all())
    first_diff = None if same else int(np.argmax(lt[:min(n, len(ids))] != ids[:min(n, len(ids))]))
    report["tokenization"] = {"llama_tokens": int(n), "hf_tokens": len(ids), "identical": same,
                              "first_difference": first_diff}
    print(f"tokenization of {args.heldout.name}: llama.cpp {n} tokens, HF {len(ids)}, identical: {same}")

    k = args.windows
    offsets = [args.offset] if k == 1 else [w * (len(ids) - args.n) // (k - 1) for w in range(k)]
    refs = {"checkpoint": False, "checkpoint_q8_rounded": True} if args.q8_ref else {"checkpoint": False}
    parts = {(g.name, r): [] for g in args.gguf for r in refs}
    for off in offsets:
        tokens = np.ascontiguousarray(ids[off:off + args.n], dtype=np.int32)
        ref = {r: hf_logits(args.ckpt, tokens, q8) for r, q8 in refs.items()}
        for path in args.gguf:
            out = np.zeros((len(tokens), ref["checkpoint"].shape[1]), dtype=np.float32)
            nv = lib.llama_logits(str(path).encode(), tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                  len(tokens), args.threads, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            if nv != out.shape[1]:
                sys.exit(f"{path}: llama_logits returned {nv}")
            for r in refs:
                parts[(path.name, r)].append(stats(ref[r], out, tokens))
    report["windows"] = {"n": args.n, "offsets": offsets}
    for (name, r), p in parts.items():
        s_ = summary(p)
        report.setdefault(name, {})[r] = s_
        print(f"{name} vs transformers on the {r}: top-1 {s_['top1_agreement']:.4f}, KL mean {s_['kl_mean']:.2e} "
              f"max {s_['kl_max']:.2e}, max |dlogit| {s_['max_abs_logit_diff']:.4f}, "
              f"ppl transformers {s_['ppl_reference']:.4f} llama.cpp {s_['ppl_llama']:.4f} ({s_['positions']} positions)")
    if args.chat:
        report["chat"] = chat_answers(lib, args.gguf[0], args.chat)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
