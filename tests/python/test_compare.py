"""`llm-server compare` (issue 13 req. 3) on checked-in `bench --url` results
(tests/data/bench-samples: our server at -t 1, twice on two dates, and at -t 2, on the demo
model): the markdown table against its golden, ratios to a baseline, and the two charts in
SVG and PNG."""
import subprocess

from helpers import ROOT, binary

SAMPLES = ROOT / "tests" / "data" / "bench-samples"
GOLDEN = ROOT / "tests" / "golden" / "compare"


def compare(*args, ok=True):
    p = subprocess.run([str(binary()), "compare", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert (p.returncode == 0) == ok, p.stderr
    return p


def test_table_matches_its_golden_and_pools_runs_of_a_configuration():
    out = compare(SAMPLES, "--no-charts").stdout
    assert out == (GOLDEN / "table.md").read_text()
    # The two -t 1 files (two dates) are one configuration: its cells carry a spread.
    row = next(l for l in out.splitlines() if l.startswith("| ours-t1 |"))
    assert " ± " in row
    files = sorted(SAMPLES.glob("*.jsonl"))
    assert compare(*files, "--no-charts").stdout == out  # files or their folder
    base = compare(SAMPLES, "--no-charts", "--baseline", "ours-t1").stdout
    assert base == (GOLDEN / "table-baseline.md").read_text()
    assert "(1.00×)" in base


def test_charts_in_svg_and_png(tmp_path):
    p = compare(SAMPLES, "--out-dir", tmp_path)
    for stem in ["compare-decode", "compare-ttft"]:
        svg = (tmp_path / f"{stem}.svg").read_text()
        assert svg.startswith("<svg") and "ours-t1" in svg and "ours-t2" in svg
        png = (tmp_path / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "medium" in (tmp_path / "compare-decode.svg").read_text()
    assert p.stderr.count("wrote ") == 4


def test_bad_inputs_are_one_line_errors(tmp_path):
    p = compare(SAMPLES, "--no-charts", "--baseline", "nope", ok=False)
    assert "no such configuration" in p.stderr and "ours-t1" in p.stderr
    p = compare(tmp_path, ok=False)
    assert "no .jsonl result files" in p.stderr
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"kind": "summary"}\nnot json\n')
    p = compare(bad, "--no-charts", ok=False)
    assert "x.jsonl:1: a summary without aggregate_decode_tok_s" in p.stderr
