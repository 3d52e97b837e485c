"""Bit-exact oracle for the `quant` crate: our dequantizers against gguf-py's numpy ones.

`llm-server dequant --type T blocks.bin -o values.f32` runs `quant::dequantize`; the oracle is
`gguf.quants.dequantize` from the `gguf` PyPI package (0.19.0), which computes in float32.
Results are compared as uint32 bit patterns, so -0.0 vs 0.0 or a last-bit rounding
difference fails. gguf-py has no Q8_1/Q8_K dequantizer: for those this file holds a
two-line numpy reference of ggml's layout (value = d * q).

1. Random blocks of every supported type: random bytes with the scale fields replaced by
   finite values (normal, subnormal, negative, zero; MXFP4 exponents 0..250).
2. Quantizers gguf-py also has (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, BF16, F16): same bytes.
3. Every tensor of the real models in LLM_SERVER_MODELS, batched per type.
"""
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGUFReader
from gguf import GGMLQuantizationType as Q
from gguf import quants

from helpers import real_models, run

N_BLOCKS = 4096
# Our table (ggml's): Q8_1 is {f16 d, f16 s, i8 qs[32]} = 36 bytes; gguf-py still says 40.
SIZES = {**GGML_QUANT_SIZES, Q.Q8_1: (32, 36)}
# Byte offsets of the f16 scale fields inside one block (ggml-common.h).
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q8_1: [0, 2],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
    Q.IQ4_NL: [0], Q.IQ4_XS: [0],
}
BLOCK_TYPES = [*F16_FIELDS, Q.Q8_K, Q.MXFP4]
FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]


def ours(qtype: Q, raw: np.ndarray, tmp: Path) -> np.ndarray:
    """Dequantize raw blocks with `llm-server dequant`."""
    src, dst = tmp / f"{qtype.name}.bin", tmp / f"{qtype.name}.f32"
    np.ascontiguousarray(raw).view(np.uint8).tofile(src)
    run("dequant", "--type", qtype.name, src, "-o", dst)
    out = np.fromfile(dst, dtype="<f4")
    src.unlink()
    dst.unlink()
    return out


def ours_quantize(qtype: Q, values: np.ndarray, tmp: Path) -> np.ndarray:
    """Quantize f32 values with `llm-server dequant --quantize`."""
    src, dst = tmp / f"{qtype.name}.f32", tmp / f"{qtype.name}.blocks"
    values.astype("<f4").tofile(src)
    run("dequant", "--quantize", "--type", qtype.name, src, "-o", dst)
    return np.fromfile(dst, dtype=np.uint8)


def reference(qtype: Q, raw: np.ndarray) -> np.ndarray:
    """gguf-py's dequantization, or ggml's layout in numpy where gguf-py has none."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, SIZES[qtype][1])
    if qtype == Q.Q8_1:  # block_q8_1: f16 d, f16 s (unused here), i8 qs[32]
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        return (d * blocks[:, 4:].copy().view(np.int8).astype(np.float32)).ravel()
    if qtype == Q.Q8_K:  # block_q8_K: f32 d, i8 qs[256], i16 bsums[16]
        d = blocks[:, 0:4].copy().view(np.float32)
        return (d * blocks[:, 4:260].copy().view(np.int8).astype(np.float32)).ravel()
    return quants.dequantize(blocks.reshape(-1), qtype).astype(np.float32, copy=False).ravel()


def assert_bit_exact(qtype: Q, got: np.ndarray, want: np.ndarray, what: str) -> None:
    want = np.ascontiguousarray(want, dtype=np.float32).ravel()
    assert got.shape == want.shape, f"{what}: {got.shape} values, gguf-py gives {want.shape}"
    g, w = got.view(np.uint32), want.view(np.uint32)
    if not np.array_equal(g, w):
        bad = np.flatnonzero(g != w)
        i = bad[0]
        block = i // SIZES[qtype][0]
        pytest.fail(f"{what}: {bad.size} of {g.size} values differ; first at {i} (block {block}): "
                    f"ours {got[i]!r} ({g[i]:#010x}), gguf-py {want[i]!r} ({w[i]:#010x})")


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random f16 bit patterns: all finite, with subnormals, negatives and zeros."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)  # Inf/NaN -> subnormal
    kind = rng.integers(0, 16, size=n)
    bits = np.where(kind == 0, 0, bits)  # +0
    bits = np.where(kind == 1, 0x8000, bits)  # -0
    bits = np.where(kind == 2, bits & 0x83FF, bits)  # subnormal
    return bits.astype(np.uint16)


def random_blocks(qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """N_BLOCKS random blocks of `qtype` with finite scales, as a (blocks, bytes) array."""
    blocks = rng.integers(0, 256, size=(N_BLOCKS, SIZES[qtype][1]), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, []):
        blocks[:, off:off + 2] = finite_f16_bits(rng, N_BLOCKS).view(np.uint8).reshape(-1, 2)
    if qtype == Q.Q8_K:
        d = (rng.standard_normal(N_BLOCKS) * np.exp2(rng.integers(-140, 40, N_BLOCKS))).astype(np.float32)
        d[::17] = 0.0
        blocks[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
    if qtype == Q.MXFP4:
        blocks[:, 0] = rng.integers(0, 251, size=N_BLOCKS, dtype=np.uint8)
    return blocks


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: Q, tmp_path: Path) -> None:
    rng = np.random.default_rng(1234 + int(qtype))
    blocks = random_blocks(qtype, rng)
    assert_bit_exact(qtype, ours(qtype, blocks, tmp_path), reference(qtype, blocks), f"random {qtype.name}")


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
def test_random_floats_bit_exact(qtype: Q, tmp_path: Path) -> None:
    rng = np.random.default_rng(99 + int(qtype))
    n = N_BLOCKS * 32
    if qtype == Q.F16:
        # Every finite f16 pattern, then random ones (NaN payloads are left out: hardware and
        # software f16 widening may quiet a signalling NaN differently).
        raw = np.concatenate([np.arange(0x7C00, dtype=np.uint16), np.arange(0x8000, 0xFC00, dtype=np.uint16),
                              finite_f16_bits(rng, n)])
    elif qtype == Q.BF16:
        raw = np.concatenate([np.arange(1 << 16, dtype=np.uint16),
                              rng.integers(0, 1 << 16, size=n, dtype=np.uint16)])
    else:
        raw = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    want = reference(qtype, raw.view(np.uint8)) if qtype == Q.BF16 else quants.dequantize(raw.view(np.uint8).view(
        np.float16 if qtype == Q.F16 else np.float32), qtype)
    assert_bit_exact(qtype, ours(qtype, raw, tmp_path), want.astype(np.float32), f"random {qtype.name}")


def quantize_inputs(rng: np.random.Generator, n_blocks: int, block: int) -> np.ndarray:
    """Gaussian rows at many scales, plus all-zero, constant and one-spike blocks."""
    x = rng.standard_normal((n_blocks, block)).astype(np.float32)
    x *= np.exp2(rng.integers(-20, 8, size=(n_blocks, 1))).astype(np.float32)
    x[0] = 0.0
    x[1] = 0.75
    x[2] = 0.0
    x[2, 5] = -3.0
    x[3, :] = np.linspace(-1, 1, block, dtype=np.float32)
    return x.ravel()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.MXFP4, Q.BF16, Q.F16],
                         ids=lambda t: t.name)
def test_quantize_matches_gguf_py(qtype: Q, tmp_path: Path) -> None:
    block = 1 if qtype in (Q.BF16, Q.F16) else SIZES[qtype][0]
    x = quantize_inputs(np.random.default_rng(7 + int(qtype)), N_BLOCKS, max(block, 32))
    got = ours_quantize(qtype, x, tmp_path)
    want = np.ascontiguousarray(quants.quantize(x, qtype)).view(np.uint8).ravel()
    assert got.shape == want.shape, f"{qtype.name}: {got.size} bytes, gguf-py gives {want.size}"
    bad = np.flatnonzero(got != want)
    if bad.size:
        i = bad[0] // SIZES[qtype][1]
        pytest.fail(f"{qtype.name}: {bad.size} bytes differ; first in block {i}: "
                    f"ours {got[i * SIZES[qtype][1]:(i + 1) * SIZES[qtype][1]].tobytes().hex()}, "
                    f"gguf-py {want[i * SIZES[qtype][1]:(i + 1) * SIZES[qtype][1]].tobytes().hex()}")


MAX_BATCH_BYTES = 128 << 20


def batches(path: Path):
    """(type, raw bytes, tensor names) per type, each batch at most MAX_BATCH_BYTES."""
    groups = defaultdict(list)
    for t in GGUFReader(path).tensors:
        groups[Q(t.tensor_type)].append(t)
    for qtype, tensors in sorted(groups.items()):
        batch, size = [], 0
        for t in tensors:
            raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
            if batch and size + raw.size > MAX_BATCH_BYTES:
                yield qtype, np.concatenate([r for _, r in batch]), [n for n, _ in batch]
                batch, size = [], 0
            batch.append((t.name, raw))
            size += raw.size
        yield qtype, np.concatenate([r for _, r in batch]), [n for n, _ in batch]


def model_ids():
    return [p.name for p in real_models()] or ["no-models"]


@pytest.mark.parametrize("model", real_models() or [None], ids=model_ids())
def test_real_model_tensors_bit_exact(model: Path | None, tmp_path: Path) -> None:
    if model is None:
        pytest.skip("LLM_SERVER_MODELS is unset or names no existing file "
                    f"(got {os.environ.get('LLM_SERVER_MODELS')!r}): run scripts/fetch-models.py --print-env")
    seen = set()
    for qtype, raw, names in batches(model):
        seen.add(qtype.name)
        if qtype in FLOAT_TYPES and qtype != Q.BF16:
            view = raw.view(np.float16 if qtype == Q.F16 else np.float32)
            want = quants.dequantize(view, qtype).astype(np.float32)
        else:
            want = reference(qtype, raw)
        what = f"{model.name}: {qtype.name} tensors {names[0]}..{names[-1]} ({len(names)})"
        assert_bit_exact(qtype, ours(qtype, raw, tmp_path), want, what)
    assert seen, f"{model.name} has no tensors"


# Opt-in: our quantizers against ggml's C reference itself (ggml-quants.c), for the types
# gguf-py cannot quantize. Set LLM_SERVER_GGML_SRC to a llama.cpp `ggml` directory; needs gcc.
GGML_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-quants.h"
void ggml_abort(const char * file, int line, const char * fmt, ...) { (void)fmt; fprintf(stderr, "%s:%d\n", file, line); abort(); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void)t; (void)ne; return 0; }
size_t ggml_type_size(enum ggml_type t) { (void)t; return 0; }
const char * ggml_type_name(enum ggml_type t) { (void)t; return "?"; }
int main(int argc, char ** argv) {
    (void)argc;
    int ty = atoi(argv[1]); long n = atol(argv[2]);
    float * x = malloc(n * 4); void * y = calloc(n * 4 + 4096, 1); size_t sz = atol(argv[3]);
    if (fread(x, 4, n, stdin) != (size_t)n) return 1;
    switch (ty) {
        case 10: quantize_row_q2_K_ref(x, y, n); break;
        case 11: quantize_row_q3_K_ref(x, y, n); break;
        case 12: quantize_row_q4_K_ref(x, y, n); break;
        case 13: quantize_row_q5_K_ref(x, y, n); break;
        case 14: quantize_row_q6_K_ref(x, y, n); break;
        case 15: quantize_row_q8_K_ref(x, y, n); break;
        case 9: quantize_row_q8_1_ref(x, y, n); break;
        case 20: quantize_iq4_nl(x, y, n / 32, 32, NULL); break;
        case 23: quantize_iq4_xs(x, y, n / 256, 256, NULL); break;
        default: return 2;
    }
    fwrite(y, 1, sz, stdout);
    return 0;
}
"""
GGML_QUANTIZE_TYPES = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_K, Q.Q8_1, Q.IQ4_NL, Q.IQ4_XS]


@pytest.fixture(scope="module")
def ggml_harness(tmp_path_factory) -> Path:
    src = os.environ.get("LLM_SERVER_GGML_SRC")
    if not src or not (Path(src) / "src" / "ggml-quants.c").exists():
        pytest.skip("set LLM_SERVER_GGML_SRC to a llama.cpp ggml/ directory to compare with ggml's C quantizers")
    tmp = tmp_path_factory.mktemp("ggml")
    (tmp / "harness.c").write_text(GGML_HARNESS)
    inc = [f"-I{src}/include", f"-I{src}/src", f"-I{src}/src/ggml-cpu"]
    subprocess.run(["gcc", "-O2", "-std=gnu11", *inc, str(tmp / "harness.c"), f"{src}/src/ggml-quants.c",
                    "-o", str(tmp / "harness"), "-lm"], check=True, capture_output=True)
    return tmp / "harness"


@pytest.mark.parametrize("qtype", GGML_QUANTIZE_TYPES, ids=lambda t: t.name)
def test_quantize_matches_ggml_c(qtype: Q, ggml_harness: Path, tmp_path: Path) -> None:
    x = quantize_inputs(np.random.default_rng(11 + int(qtype)), 512, 256)
    size = x.size // SIZES[qtype][0] * SIZES[qtype][1]
    want = np.frombuffer(subprocess.run([str(ggml_harness), str(int(qtype)), str(x.size), str(size)],
                                        input=x.astype("<f4").tobytes(), capture_output=True, check=True).stdout,
                         dtype=np.uint8)
    got = ours_quantize(qtype, x, tmp_path)
    bad = np.flatnonzero((got.reshape(-1, SIZES[qtype][1]) != want.reshape(-1, SIZES[qtype][1])).any(axis=1))
    assert bad.size == 0, f"{qtype.name}: {bad.size} of {got.size // SIZES[qtype][1]} blocks differ from ggml (first {bad[0]})"
