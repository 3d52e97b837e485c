#!/usr/bin/env python3
"""Write the dumped vocab as a vocab-only GGUF and tokenize with llama.cpp.

Writes a GGUF holding only `general.architecture = qwen35moe` and the tokenizer keys that
`llm-server synth` writes (gguf-py's GGUFWriter), loads it with llama.cpp's vocab-only loader
(llama_tokenize.c, calling the llama.cpp inside the `xllamacpp` wheel) and tokenizes the
texts recorded by `check_merges.py --ids-out`. llama.cpp's ids must equal our merge-BPE ids on
every text; where they differ from tiktoken, merge-BPE must differ there too (the whole-piece
shortcut check_merges.py accepts).

Usage: check_llama.py VOCAB_JSON IDS_JSON --llama-src DIR [--workdir DIR]
  --llama-src: a llama.cpp source tree of the same version as the wheel, for llama.h
               (e.g. thirdparty/llama.cpp of the xllamacpp sdist).
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import xllamacpp


def write_gguf(dump: dict, path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "qwen35moe")
    w.add_tokenizer_model(dump["model"])
    w.add_tokenizer_pre(dump["pre"])
    w.add_token_list(dump["tokens"])
    w.add_token_types(dump["token_types"])
    w.add_token_merges(dump["merges"])
    w.add_eos_token_id(dump["eos_id"])
    w.add_pad_token_id(dump["pad_id"])
    if dump["bos_id"] is not None:
        w.add_bos_token_id(dump["bos_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(dump["chat_template"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_tokenizer(llama_src: Path, out: Path):
    """Build llama_tokenize.c as a shared library and load it over the wheel's llama.cpp."""
    here = Path(__file__).parent
    cmd = ["gcc", "-O2", "-shared", "-fPIC", f"-I{llama_src}/include", f"-I{llama_src}/ggml/include",
           str(here / "llama_tokenize.c"), "-o", str(out)]
    subprocess.run(cmd, check=True)
    ctypes.CDLL(str(Path(xllamacpp.__file__).parent / "xllamacpp.abi3.so"), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(out))
    lib.tokenize_texts.argtypes = [ctypes.c_char_p] * 3
    lib.tokenize_texts.restype = ctypes.c_int
    return lib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vocab_json")
    ap.add_argument("ids_json")
    ap.add_argument("--llama-src", required=True, type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/vocab-check"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    dump = json.load(open(args.vocab_json, encoding="utf-8"))
    records = json.load(open(args.ids_json, encoding="utf-8"))
    model = args.workdir / "qwen35-vocab-only.gguf"
    write_gguf(dump, model)
    print(f"wrote {model} ({os.path.getsize(model) / 2**20:.1f} MiB)")
    lib = load_tokenizer(args.llama_src, args.workdir / "libllama_tokenize.so")

    texts, out = args.workdir / "texts.bin", args.workdir / "llama_ids.txt"
    texts.write_bytes(b"\0".join(r["text"].encode("utf-8") for r in records))
    sys.stdout.flush()  # llama.cpp's loader summary goes to stderr in between
    if lib.tokenize_texts(str(model).encode(), str(texts).encode(), str(out).encode()) != 0:
        return 1
    lines = out.read_text().splitlines()
    assert len(lines) == len(records), (len(lines), len(records))

    same_as_ours = same_as_tiktoken = 0
    failed = 0
    for index, (line, r) in enumerate(zip(lines, records)):
        ids = [int(x) for x in line.split()]
        same_as_ours += ids == r["merge_bpe"]
        same_as_tiktoken += ids == r["tiktoken"]
        if ids != r["merge_bpe"]:
            failed += 1
            first = next((i for i, (a, b) in enumerate(zip(ids, r["merge_bpe"])) if a != b), None)
            print(f"  text {index}: llama.cpp differs from merge-BPE at token {first}: "
                  f"llama {ids[first:first + 5] if first is not None else ids[-5:]} "
                  f"ours {r['merge_bpe'][first:first + 5] if first is not None else r['merge_bpe'][-5:]}")
    n = len(records)
    print(f"llama.cpp vs merge-BPE: {same_as_ours}/{n} texts identical; "
          f"vs tiktoken: {same_as_tiktoken}/{n} identical")
    print("OK" if failed == 0 else "FAILED")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
