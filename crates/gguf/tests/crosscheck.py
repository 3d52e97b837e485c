#!/usr/bin/env python3
"""Cross-check the gguf crate against gguf-py (the `gguf` PyPI package).

1. gguf-py writes a file with every metadata type, nested arrays, a custom alignment and
   tensors of several ggml types (a 3-D expert tensor among them).
2. `cargo run --release -p gguf --example rewrite` reads it with our reader and writes it back with our
   writer; the output must be byte-identical to gguf-py's file.
3. gguf-py's GGUFReader reads our output and must see the same fields and tensor data.

Usage: python crates/gguf/tests/crosscheck.py   (needs `pip install gguf numpy`; run from
anywhere inside the workspace; exits non-zero on any mismatch)
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType as V, GGUFWriter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write_reference(path: str) -> None:
    w = GGUFWriter(path, arch="qwen3moe")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float32("t.f32", 0.25)
    w.add_float64("t.f64", -1e300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_array("t.tokens", ["<s>", "</s>", "héllo", ""])
    w.add_array("t.scores", [0.0, -1.5, 3.25])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.nested", [[1, 2], [3], ["a", "b"]])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 64), dtype=np.float32))
    w.add_tensor("norm.weight", rng.standard_normal(7).astype(np.float16))
    q8 = rng.integers(0, 256, size=(4, 2, 34), dtype=np.uint8)  # 4 experts x 2 rows x 1 block
    w.add_tensor("blk.0.ffn_up_exps.weight", q8, raw_shape=(4, 2, 34), raw_dtype=Q.Q8_0)
    w.add_tensor("ids", np.arange(5, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_value(f):
    if f.types[0] == V.ARRAY:
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = os.path.join(tmp, "ref.gguf"), os.path.join(tmp, "ours.gguf")
        write_reference(ref)
        cmd = ["cargo", "run", "-q", "--release", "-p", "gguf", "--example", "rewrite", "--", ref, ours]
        subprocess.run(cmd, cwd=ROOT, check=True)
        a, b = open(ref, "rb").read(), open(ours, "rb").read()
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"FAIL: rewrite differs from gguf-py's file at byte {first} ({len(a)} vs {len(b)} bytes)")
            return 1
        ra, rb = GGUFReader(ref), GGUFReader(ours)
        for name, fa in ra.fields.items():
            fb = rb.fields[name]
            if field_value(fa) != field_value(fb):
                print(f"FAIL: field {name}: {field_value(fa)!r} != {field_value(fb)!r}")
                return 1
        for ta, tb in zip(ra.tensors, rb.tensors):
            same = (ta.name, ta.tensor_type, list(ta.shape)) == (tb.name, tb.tensor_type, list(tb.shape))
            if not same or not np.array_equal(ta.data, tb.data):
                print(f"FAIL: tensor {ta.name}")
                return 1
        print(f"ok: {len(ra.fields)} fields, {len(ra.tensors)} tensors, {len(a)} bytes identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
