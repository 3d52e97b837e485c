"""The CUDA kernels' dequantization (crates/cuda/src/kernels/quant.cuh) against gguf-py, bit
for bit, on random blocks of every type the GPU reads. The device functions are compiled for
the host with g++ (cuda_host/shim.h stands in for common.cuh), so this runs without a GPU;
the GPU tests then check the same functions on the device against the CPU engine."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, quants

from helpers import ROOT

KERNELS = ROOT / "crates" / "cuda" / "src" / "kernels"
HOST = Path(__file__).parent / "cuda_host"
# ggml type → byte offsets of its f16 scales (random bytes there could be NaN or huge).
TYPES = {
    "F32": [], "F16": [], "BF16": [], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
    "Q8_0": [0], "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0], "MXFP4": [],
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_host")
    src = (KERNELS / "quant.cuh").read_text()
    # The device's aligned 4-byte loads become the shim's memcpy loads.
    src = src.replace("*(const u32*)qs, c = *(const u32*)(qs + 4)", "ld32a2(qs), c = ld32a2(qs + 4)")
    (out / "quant_host.cuh").write_text(src)
    bins = {}
    for name in TYPES:
        exe = out / f"deq_{name}"
        subprocess.run(["g++", "-O1", "-std=c++17", f"-DWTYPE={int(Q[name])}", "-I", str(HOST),
                        "-I", str(out), str(HOST / "main.cpp"), "-o", str(exe)], check=True)
        bins[name] = exe
    bins["_dir"] = out
    return bins


@pytest.mark.parametrize("name", list(TYPES))
def test_dequant_matches_gguf_py(build, name, tmp_path):
    qt = Q[name]
    block, size = GGML_QUANT_SIZES[qt]
    rng = np.random.default_rng(int(qt) + 1)
    if name in ("F32", "F16", "BF16"):
        values = rng.uniform(-3, 3, 64 * 8).astype(np.float32)
        raw = quants.quantize(values.reshape(1, -1), qt).view(np.uint8).reshape(-1)
    else:
        blocks = rng.integers(0, 256, (64, size), dtype=np.uint8)
        for o in TYPES[name]:
            blocks[:, o:o + 2] = np.float16(rng.uniform(1e-3, 0.1, 64)).view(np.uint8).reshape(64, 2)
        raw = blocks.reshape(-1)
    want = quants.dequantize(raw.reshape(1, -1), qt).reshape(-1).astype(np.float32)
    path = tmp_path / "blocks.bin"
    raw.tofile(path)
    got = np.frombuffer(subprocess.run([build[name], path], capture_output=True, check=True).stdout,
                        dtype=np.float32)
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
        f"{name}: {np.count_nonzero(got != want)} of {got.size} values differ"


# Types with an integer dot product (`VDOT` in quant.cuh, the decode kernel `mmvq`).
VDOT_TYPES = ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("name", VDOT_TYPES)
def test_vdot_matches_dequantized_dot(build, name, tmp_path):
    """quant.cuh's integer dot products (weights as stored × 8-bit activations) against the
    f64 dot of gguf-py's dequantized weights with the dequantized activations, on rows of
    several blocks of random bytes."""
    qt = Q[name]
    block, size = GGML_QUANT_SIZES[qt]
    out = build["_dir"]
    exe = out / f"vdot_{name}"
    if not exe.exists():
        subprocess.run(["g++", "-O1", "-std=c++17", "-fno-strict-aliasing", f"-DWTYPE={int(qt)}",
                        "-I", str(HOST), "-I", str(out), str(HOST / "vdot.cpp"), "-o", str(exe)],
                       check=True)
    rng = np.random.default_rng(100 + int(qt))
    for rep in range(8):
        nb = 8 * 32 // block * (1 + rep % 3)  # 256, 512 or 768 values
        blocks = rng.integers(0, 256, (nb, size), dtype=np.uint8)
        for o in TYPES[name]:
            blocks[:, o:o + 2] = np.float16(rng.uniform(1e-3, 0.1, nb)).view(np.uint8).reshape(nb, 2)
        raw = blocks.reshape(-1)
        w = quants.dequantize(raw.reshape(1, -1), qt).reshape(-1).astype(np.float64)
        k = w.size
        xq = rng.integers(-127, 128, k, dtype=np.int8)
        xd = rng.uniform(1e-3, 2e-2, k // 32).astype(np.float32)
        x = xq.astype(np.float64) * np.repeat(xd.astype(np.float64), 32)
        want = float(np.dot(w, x))
        paths = [tmp_path / f"{p}.bin" for p in ("w", "xq", "xd")]
        for p, a in zip(paths, (raw, xq, xd)):
            a.tofile(p)
        got = np.frombuffer(subprocess.run([exe, *paths], capture_output=True, check=True).stdout,
                            dtype=np.float32)[0]
        scale = float(np.dot(np.abs(w), np.abs(x)))
        assert abs(got - want) <= 1e-5 * scale, f"{name} rep {rep}: {got} vs {want}"
