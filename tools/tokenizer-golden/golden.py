#!/usr/bin/env python3
"""Write golden token ids from llama.cpp for the tokenizer tests.

For each test vocabulary (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B from $LLM_SERVER_MODELS,
and the 248K Qwen3.5 vocabulary of an `llm-server synth` file) and each test text
(tests/data/wikitext-2-raw/wiki.test.raw, tests/data/tokenizer/mixed.txt), tokenizes the text
with llama.cpp's `llama_tokenize` (vocab-only load, the llama.cpp inside the xllamacpp wheel,
b11549) and writes

  tests/golden/tokenizer/<vocab>/<text>.as<0|1>-ps<0|1>.u32.gz   ids, little-endian u32, gzip
  tests/golden/tokenizer/<vocab>/<text>.as<0|1>-ps<0|1>.detok    llama_detokenize of those ids
                                                                 (mixed text only)
  tests/golden/tokenizer/manifest.json                           what each file is, with hashes

Vocabularies `smollm2-pre-<pre>` are SmolLM2's tokens and merges with `tokenizer.ggml.pre`
replaced by `llama-bpe`, `default` or `gpt-2`, to check pre-tokenizers no test model uses.

as = add_special, ps = parse_special. WikiText is tokenized with add_special = 1,
parse_special = 0 (as perplexity runs do); the mixed text with (1, 1), (1, 0) and (0, 1).

Usage: golden.py --qwen35 SYNTH.gguf [--llama-src DIR] [--workdir DIR]
  --llama-src: llama.cpp source of the wheel's version, for llama.h (default: the xllamacpp
               sdist unpacked under $LLM_SERVER_CACHE/llama.cpp-b11549 or /tmp/xl).
Needs: python with xllamacpp==2026.10.11549 and gguf (the repo's .venv), gcc.
"""
import argparse
import ctypes
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import xllamacpp

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/golden/tokenizer"
TEXTS = {
    "wikitext-test": ROOT / "tests/data/wikitext-2-raw/wiki.test.raw",
    "mixed": ROOT / "tests/data/tokenizer/mixed.txt",
}
RUNS = {"wikitext-test": [(1, 0)], "mixed": [(1, 1), (1, 0), (0, 1)]}
# Pre-tokenizers none of the test models uses, checked on SmolLM2's vocabulary and merges with
# `tokenizer.ggml.pre` replaced (the Rust test makes the same swap in memory).
DERIVED_PRE = ["llama-bpe", "default", "gpt-2"]
LLAMA_CPP = "b11549 (xllamacpp 2026.10.11549)"


def vocab_name(path: Path) -> str:
    """Names the test vocabulary of a GGUF file by its tokenizer keys."""
    fields = gguf.GGUFReader(str(path)).fields

    def text(key: str) -> str:
        f = fields.get(key)
        return bytes(f.parts[f.data[0]]).decode() if f else ""

    model, pre = text("tokenizer.ggml.model"), text("tokenizer.ggml.pre")
    names = {("gpt2", "smollm"): "smollm2", ("llama", "default"): "gemma3", ("gpt2", "qwen2"): "qwen2",
             ("gpt2", "qwen35"): "qwen35"}
    if (model, pre) not in names:
        raise SystemExit(f"{path}: unexpected tokenizer {model}/{pre}")
    return names[(model, pre)]


def derived_vocab(smollm2: Path, pre: str, workdir: Path) -> Path:
    """A vocab-only GGUF: SmolLM2's tokenizer keys with `tokenizer.ggml.pre = pre`."""
    fields = gguf.GGUFReader(str(smollm2)).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key: str) -> int:
        return int(fields[key].parts[fields[key].data[0]][0])

    path = workdir / f"smollm2-pre-{pre}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(strings("tokenizer.ggml.tokens"))
    w.add_token_types([scalar_at(fields["tokenizer.ggml.token_type"], i)
                       for i in range(len(fields["tokenizer.ggml.token_type"].data))])
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_bos_token_id(scalar("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(scalar("tokenizer.ggml.eos_token_id"))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def scalar_at(field, i: int) -> int:
    return int(field.parts[field.data[i]][0])


def default_llama_src() -> Path:
    cache = Path(os.environ.get("LLM_SERVER_CACHE", ROOT / ".cache"))
    for base in (cache / "llama.cpp-b11549", Path("/tmp/xl")):
        for cand in base.glob("xllamacpp-*/thirdparty/llama.cpp"):
            return cand
    raise SystemExit("no llama.cpp source found: pass --llama-src")


def load_lib(llama_src: Path, workdir: Path):
    so = workdir / "libllama_golden.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{llama_src}/include", f"-I{llama_src}/ggml/include",
                    str(Path(__file__).parent / "llama_golden.c"), "-o", str(so)], check=True)
    ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(so))
    lib.tokenize_file.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_int] * 2
    lib.detokenize_file.argtypes = [ctypes.c_char_p] * 3
    return lib


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qwen35", required=True, type=Path, help="an `llm-server synth` qwen35moe file")
    ap.add_argument("--llama-src", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tokenizer-golden"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    lib = load_lib(args.llama_src or default_llama_src(), args.workdir)
    models = [Path(p) for p in os.environ.get("LLM_SERVER_MODELS", "").split(os.pathsep) if p] + [args.qwen35]
    named = [(vocab_name(m), m) for m in models]
    smollm2 = next((m for name, m in named if name == "smollm2"), None)
    if smollm2 is not None:
        named += [(f"smollm2-pre-{pre}", derived_vocab(smollm2, pre, args.workdir)) for pre in DERIVED_PRE]
    manifest = {"llama_cpp": LLAMA_CPP, "entries": []}
    for vocab, model in named:
        (OUT / vocab).mkdir(parents=True, exist_ok=True)
        for text_name, text_path in TEXTS.items():
            for add_special, parse_special in RUNS[text_name]:
                stem = f"{text_name}.as{add_special}-ps{parse_special}"
                raw = args.workdir / f"{vocab}.{stem}.u32"
                n = lib.tokenize_file(str(model).encode(), str(text_path).encode(), str(raw).encode(),
                                      add_special, parse_special)
                if n < 0:
                    return 1
                ids = raw.read_bytes()
                gz = OUT / vocab / f"{stem}.u32.gz"
                with open(gz, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, compresslevel=9) as z:
                    z.write(ids)
                entry = {"vocab": vocab, "model_file": model.name, "text": str(text_path.relative_to(ROOT)),
                         "text_sha256": sha256(text_path.read_bytes()), "add_special": bool(add_special),
                         "parse_special": bool(parse_special), "n_ids": n, "ids_sha256": sha256(ids),
                         "ids": str(gz.relative_to(OUT))}
                if text_name == "mixed":
                    detok = OUT / vocab / f"{stem}.detok"
                    if lib.detokenize_file(str(model).encode(), str(raw).encode(), str(detok).encode()) < 0:
                        return 1
                    entry["detok"] = str(detok.relative_to(OUT))
                manifest["entries"].append(entry)
                print(f"{vocab:8} {stem:24} {n:7} ids  {gz.stat().st_size / 1024:7.1f} KiB")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"total {total / 2**20:.2f} MiB in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
