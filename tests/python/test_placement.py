"""Hybrid placement from the command line (issue 11): `llm-server fit` plans where every
expert goes without loading the weights, `llm-server calibrate` writes routing statistics the
planner reads, and llama-server's placement flags are accepted with clear errors for bad
values. (The placements themselves run on the GPU: crates/cuda/tests/models.rs.)"""
import json
import os
import subprocess

from helpers import ROOT, binary

DEMO = ROOT / "models" / "demo-moe-f16.gguf"
WIKI = ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def cli(*args, ok=True):
    p = subprocess.run([str(binary()), *map(str, args)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "RUST_BACKTRACE": "1"})
    assert (p.returncode == 0) == ok, p
    return p


def experts_line(out):
    return next(l for l in out.splitlines() if l.startswith("experts: "))


def test_fit_prints_the_plan_and_fills_a_budget():
    whole = cli("fit", "-m", DEMO, "--device", "cpu", "--no-bandwidth").stdout
    assert "| non-expert weights | GPU |" in whole and "| blk.7 experts (32 × " in whole
    assert experts_line(whole).startswith("experts: 256 of 256 on the GPU")
    # 1 MiB short of the whole model (610 MiB, 512 of them the runtime reserve): the highest
    # ids of every layer go to RAM, evenly.
    fitted = cli("fit", "-m", DEMO, "--device", "cpu", "--vram-budget", "609",
                 "--no-bandwidth").stdout
    assert "| GPU 26, RAM 6 (experts 26-31) |" in fitted, fitted
    assert "of a 609 MiB budget" in experts_line(fitted)
    # llama.cpp's spellings: -ncmoe, -ot with several rules, a device name per rule.
    flags = cli("fit", "-m", DEMO, "--device", "cpu", "-ncmoe", "2", "-ot",
                r"blk\.5\.ffn_.*_exps=CPU,blk\.6\.ffn_up_exps=CUDA0", "--no-bandwidth").stdout
    rows = [l for l in flags.splitlines() if l.startswith("| blk.")]
    assert [r.split("|")[2].strip() for r in rows] == ["RAM", "RAM", "GPU", "GPU", "GPU", "RAM",
                                                      "GPU", "GPU"], rows


def test_bad_placement_flags_are_one_line_errors():
    for args, reason in [
        (["-ot", "exps"], "expected REGEX=DEVICE"),
        (["-ot", "exps=TPU"], "unknown device"),
        (["-ot", "(exps=CPU"], "bad regular expression"),
        (["--fit", "maybe"], "expected on or off"),
        (["--vram-budget", "40"], "alone need"),
        (["--vram-budget", "607", "--fit", "off"], "use --fit on"),
        (["--expert-stats", "/nonexistent.json"], "cannot read --expert-stats"),
    ]:
        p = cli("fit", "-m", DEMO, "--device", "cpu", "--no-bandwidth", *args, ok=False)
        lines = p.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and reason in lines[-1], (args, p.stderr)
        assert "backtrace" not in p.stderr.lower()


def test_calibrate_writes_stats_the_planner_uses(tmp_path):
    text = tmp_path / "text.txt"
    text.write_bytes(WIKI.read_bytes()[:120_000])
    stats = tmp_path / "stats.json"
    cli("calibrate", "-m", DEMO, "-f", text, "-o", stats, "--chunks", "4", "-t", "2")
    d = json.loads(stats.read_text())
    assert d["format"] == "llm-server expert-stats" and d["version"] == 1
    assert d["model"]["arch"] == "qwen35moe" and d["model"]["n_expert"] == 32
    assert d["gathered"]["tokens"] == 4 * 512
    counts = {int(k): v for k, v in d["counts"].items()}
    assert sorted(counts) == list(range(8))
    # Every token chose 4 experts in every layer.
    assert all(len(c) == 32 and sum(c) == 4 * 512 * 4 for c in counts.values())
    out = cli("fit", "-m", DEMO, "--device", "cpu", "--vram-budget", "607", "--expert-stats",
              stats, "--no-bandwidth").stdout
    # Layer 0's GPU experts are its most used ones.
    row = next(l for l in out.splitlines() if l.startswith("| blk.0 experts"))
    ram = set()
    for part in row.split("(experts ")[1].split(")")[0].split(", "):
        a, _, b = part.partition("-")
        ram.update(range(int(a), int(b or a) + 1))
    gpu = set(range(32)) - ram
    assert min(counts[0][e] for e in gpu) >= max(counts[0][e] for e in ram), row
    # A stats file made for another model is refused by name.
    other = dict(d, model=dict(d["model"], fingerprint="fnv1a64:0123456789abcdef"))
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    p = cli("fit", "-m", DEMO, "--device", "cpu", "--expert-stats", bad, "--no-bandwidth",
            ok=False)
    assert "made for another model" in p.stderr, p.stderr


def test_the_seeds_launch_line_runs():
    """llama-server's flags as the seed launches it (issue 11 req. 1), on the demo model and
    the CPU here (`--port 0` so tests do not collide): it parses, loads and listens."""
    import select
    import time
    p = subprocess.Popen(
        [str(binary()), "serve", "-m", str(DEMO), "-c", "65536", "--fit", "on", "-fa", "on",
         "-t", "20", "--no-mmap", "--jinja", "-ctk", "q8_0", "-ctv", "q8_0", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.monotonic() + 120, ""
        while time.monotonic() < deadline and not line.startswith("listening on "):
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                line = p.stdout.readline()
            assert p.poll() is None, p.stderr.read()
        assert line.startswith("listening on "), line
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_serve_and_bench_write_live_routing_stats(tmp_path):
    """`--expert-stats-out` (issue 11 req. 2): the routing of what `serve` answered and what
    `bench` ran, in calibrate's format, which `fit --expert-stats` reads."""
    from test_server import Server
    live = tmp_path / "live.json"
    s = Server(tmp_path / "server.log", "--device", "cpu", "--alias", "demo", "-c", "1024",
               "--expert-stats-out", str(live))
    try:
        r = s.client().chat.completions.create(
            model="demo", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Tell me about the whale."}])
        # The last token sampled at max_tokens never goes through the model.
        fed = r.usage.completion_tokens - (r.choices[0].finish_reason == "length")
        answered = r.usage.prompt_tokens + fed
    finally:
        s.stop()  # SIGTERM: the file is written on the way out
    d = json.loads(live.read_text())
    assert d["format"] == "llm-server expert-stats" and d["gathered"]["by"] == "serve"
    counts = {int(k): v for k, v in d["counts"].items()}
    assert sorted(counts) == list(range(8))
    # Every token through the model chose 4 experts in every layer (the prompt's last layer
    # routes only its last token, as llama.cpp's does).
    assert all(sum(c) >= 4 * fed for c in counts.values())
    assert max(sum(c) for c in counts.values()) == 4 * answered
    cli("fit", "-m", DEMO, "--device", "cpu", "--vram-budget", "607", "--expert-stats", live,
        "--no-bandwidth")
    bench = tmp_path / "bench.json"
    cli("bench", "-m", DEMO, "--device", "cpu", "-p", "16", "-n", "4", "-r", "1", "-t", "2",
        "--no-bandwidth", "--expert-stats-out", bench)
    b = json.loads(bench.read_text())
    assert b["gathered"]["by"] == "bench" and b["gathered"]["tokens"] > 0
