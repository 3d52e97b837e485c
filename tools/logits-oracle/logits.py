#!/usr/bin/env python3
"""Compare our engine's logits with llama.cpp's (CPU, the xllamacpp wheel) on the same GGUF and
tokens: top-1 agreement and mean KL(llama.cpp ‖ ours) over every position.

Usage: logits.py MODEL.gguf --text FILE [--n 512] [--llama-src DIR] [--golden OUT.npz]
                 [-ctk f16|q8_0|q4_0] [-ctv f16|q8_0|q4_0]
Tokens come from llama.cpp's own tokenizer (via `tokenize_texts` of tools/vocab-check), so only
the forward pass is compared. -ctk/-ctv run both engines with that KV cache type (llama.cpp with
flash attention on, which it needs for a quantized V cache). With --golden, writes the tokens and
llama.cpp's top-20 logits and log-sum-exp per position (a few hundred KB) for CI to check without
the oracle, plus how well llama.cpp agrees with itself (batched vs token by token; --self-check
prints it alone).
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def load_lib(llama_src: Path, work: Path) -> ctypes.CDLL:
    import xllamacpp
    so = work / "libllama_logits.so"
    srcs = [HERE / "llama_logits.c", ROOT / "tools/vocab-check/llama_tokenize.c"]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{llama_src}/include",
                    f"-I{llama_src}/ggml/include", *map(str, srcs), "-o", str(so)], check=True)
    ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(so))
    lib.dump_logits.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    lib.dump_logits_ubatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.dump_logits_cache.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.tokenize_texts.argtypes = [ctypes.c_char_p] * 3
    return lib


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, ours: np.ndarray) -> tuple[float, float, float]:
    """(top-1 agreement, mean KL(ref‖ours), max KL)."""
    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(ours.astype(np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    top1 = float((ref.argmax(-1) == ours.argmax(-1)).mean())
    return top1, float(kl.mean()), float(kl.max())


# ggml type ids of the KV cache types both engines take (ggml.h `enum ggml_type`).
GGML_TYPE = {"f16": 1, "q4_0": 2, "q8_0": 8}


def oracle_logits(lib: ctypes.CDLL, model: str, text: str, n: int, work: Path,
                  cache: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's tokens for the first `n` tokens of `text`, and its logits at every position;
    `cache` = (K type, V type) sets the KV cache type and turns flash attention on."""
    (work / "texts").write_bytes(text.encode() + b"\0")
    if lib.tokenize_texts(model.encode(), str(work / "texts").encode(), str(work / "ids").encode()):
        raise RuntimeError(f"llama.cpp could not tokenize with {model}")
    ids = np.array((work / "ids").read_text().split()[:n], dtype="<u4")
    ids.tofile(work / "tokens.u32")
    threads = min(os.cpu_count() or 1, 8)
    tk, tv = (GGML_TYPE[cache[0]], GGML_TYPE[cache[1]]) if cache else (-1, -1)
    if lib.dump_logits_cache(model.encode(), str(work / "tokens.u32").encode(), threads,
                             str(work / "ref.f32").encode(), 0, tk, tv):
        raise RuntimeError(f"llama.cpp could not run {model}")
    return ids, np.fromfile(work / "ref.f32", dtype="<f4").reshape(len(ids), -1)


def oracle_logits_decode(lib: ctypes.CDLL, model: str, ids: np.ndarray, work: Path,
                         cache: tuple[str, str] | None = None) -> np.ndarray:
    """llama.cpp's logits for the same tokens fed one at a time (its decode path, which uses
    other kernels than the batched one): how far llama.cpp agrees with itself is the floor for
    how far any other engine can agree with it."""
    ids.astype("<u4").tofile(work / "tokens.u32")
    threads = min(os.cpu_count() or 1, 8)
    tk, tv = (GGML_TYPE[cache[0]], GGML_TYPE[cache[1]]) if cache else (-1, -1)
    if lib.dump_logits_cache(model.encode(), str(work / "tokens.u32").encode(), threads,
                             str(work / "ref1.f32").encode(), 1, tk, tv):
        raise RuntimeError(f"llama.cpp could not run {model}")
    return np.fromfile(work / "ref1.f32", dtype="<f4").reshape(len(ids), -1)


def our_logits(binary: str, model: str, ids: np.ndarray, work: Path,
               cache: tuple[str, str] | None = None) -> np.ndarray:
    ids.astype("<u4").tofile(work / "tokens.u32")
    flags = ["-ctk", cache[0], "-ctv", cache[1]] if cache else []
    subprocess.run([binary, "logits", "-m", model, "--tokens", str(work / "tokens.u32"),
                    "-o", str(work / "ours.f32"), *flags], check=True)
    return np.fromfile(work / "ours.f32", dtype="<f4").reshape(len(ids), -1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--llama-src", default=os.environ.get("LLAMA_SRC", str(ROOT / ".cache/llama.cpp-b11549")))
    ap.add_argument("--bin", default=str(ROOT / "target/release/llm-server"))
    ap.add_argument("--golden")
    ap.add_argument("-ctk", "--cache-type-k", choices=GGML_TYPE, help="KV cache type of keys (both engines)")
    ap.add_argument("-ctv", "--cache-type-v", choices=GGML_TYPE, help="KV cache type of values")
    ap.add_argument("--self-check", action="store_true",
                    help="also compare llama.cpp batched with llama.cpp token by token")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lib = load_lib(Path(args.llama_src), work)
        text = Path(args.text).read_bytes().decode("utf-8")[: args.n * 8]
        cache = None
        if args.cache_type_k or args.cache_type_v:
            cache = (args.cache_type_k or "f16", args.cache_type_v or "f16")
        ids, ref = oracle_logits(lib, args.model, text, args.n, work, cache)
        ours = our_logits(args.bin, args.model, ids, work, cache)
        top1, kl, kl_max = compare(ref, ours)
        kv = f" (KV {cache[0]}/{cache[1]})" if cache else ""
        print(f"{Path(args.model).name}{kv}: {len(ids)} positions, top-1 agreement {top1:.4f}, "
              f"mean KL {kl:.3e}, max KL {kl_max:.3e}")
        if args.golden or args.self_check:
            self_top1, self_kl, _ = compare(ref, oracle_logits_decode(lib, args.model, ids, work, cache))
            print(f"  llama.cpp batched vs token by token: top-1 {self_top1:.4f}, mean KL {self_kl:.3e}")
        if args.golden:
            top = np.argsort(-ref, axis=-1)[:, :20]
            lse = np.log(np.exp(ref - ref.max(-1, keepdims=True)).sum(-1)) + ref.max(-1)
            np.savez_compressed(args.golden, tokens=ids, top_ids=top.astype(np.int32),
                                top_logits=np.take_along_axis(ref, top, -1), lse=lse.astype(np.float32),
                                self_top1=self_top1, self_kl=self_kl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
