"""`llm-server bench --url` (issue 13 req. 1) against `serve` on the demo model over loopback:
every suite at two concurrency levels, one JSON line per request (and per multi-turn turn)
carrying the configuration, one summary line per suite and level; errors recorded, not fatal;
a server that is not there is a one-line error."""
import json
import subprocess

import pytest

from helpers import ROOT, binary
from test_server import module_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "-c", "8192")


def bench(*args, ok=True):
    p = subprocess.run([str(binary()), "bench", *map(str, args)], capture_output=True,
                       text=True, timeout=600)
    assert (p.returncode == 0) == ok, p.stderr
    return p


def test_every_suite_at_two_levels(server, tmp_path):
    out = tmp_path / "run.jsonl"
    p = bench("--url", server.url, "--suite", "short,medium,long,multi-turn", "--concurrency",
              "1,2", "--requests", "2", "--max-tokens", "8", "--config-name", "demo-cpu",
              "--server-flags", "serve -c 8192 -t 1", "--model-file",
              ROOT / "models" / "demo-moe-f16.gguf", "-o", out)
    assert "requests in" in p.stderr and "/" in p.stderr  # the progress bar and the end line
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    reqs = [l for l in lines if l["kind"] == "request"]
    sums = [l for l in lines if l["kind"] == "summary"]
    # 3 one-turn suites × (2 + 2) requests, multi-turn 4 conversations × 5 turns.
    assert len(reqs) == 3 * 4 + 4 * 5, len(reqs)
    assert [(s["suite"], s["concurrency"]) for s in sums] == [
        (s, c) for s in ["short", "medium", "long", "multi-turn"] for c in [1, 2]]
    for r in reqs:
        assert r["error"] is None, r
        assert r["tokens_out"] >= 1 and r["ttft_s"] > 0 and r["total_s"] >= r["ttft_s"]
        assert r["prefill_tok_s"] > 0
        c = r["config"]
        assert c["name"] == "demo-cpu" and c["model"] == "demo" and c["max_tokens"] == 8
        assert c["model_hash"].startswith("fnv1a64-64MiB:") and c["machine"]["cores"] >= 1
        assert c["server_flags"] == "serve -c 8192 -t 1" and c["date"].startswith("20")
    # Prompt sizes per suite: short ≪ medium ≪ long; multi-turn grows turn by turn.
    size = lambda s: max(r["tokens_in"] for r in reqs if r["suite"] == s)
    assert size("short") < 100 < size("medium") < 1500 < size("long")
    turns = sorted((r["turn"], r["tokens_in"]) for r in reqs
                   if r["suite"] == "multi-turn" and r["request"] == 0 and r["concurrency"] == 1)
    assert [t for t, _ in turns] == [0, 1, 2, 3, 4]
    assert all(a[1] < b[1] for a, b in zip(turns, turns[1:])), turns
    for s in sums:
        assert s["errors"] == 0 and s["aggregate_decode_tok_s"] > 0
        assert s["ttft_s"]["median"] > 0


def test_errors_are_recorded_and_a_missing_server_is_one_line(server, tmp_path):
    # A wrong model name: every request fails with the server's own message, the run goes on.
    out = tmp_path / "bad.jsonl"
    bench("--url", server.url, "--suite", "short", "--concurrency", "1", "--requests", "2",
          "--max-tokens", "4", "--model-name", "no-such-model", "-o", out)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    errs = [l["error"] for l in lines if l["kind"] == "request"]
    assert len(errs) == 2 and all(e.startswith("HTTP 404: ") and "no-such-model" in e
                                  for e in errs), errs
    assert lines[-1]["kind"] == "summary" and lines[-1]["errors"] == 2
    # Nothing listening: one line of reasons.
    p = bench("--url", "http://127.0.0.1:9", "--suite", "short", ok=False)
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "cannot reach the server" in lines[-1], p.stderr
    p = bench("--url", "https://example.com", ok=False)
    assert "TLS is not supported" in p.stderr
    p = bench("--url", server.url, "--suite", "huge", ok=False)
    assert "expected short, medium, long or multi-turn" in p.stderr


def test_bench_script_runs_a_named_configuration_and_stops_the_server(tmp_path):
    import os
    import socket
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    env = {**os.environ, "BIN": str(binary()), "SUITES": "short,multi-turn", "CONCURRENCY": "1",
           "REQUESTS": "1", "MAX_TOKENS": "4", "OUT_DIR": str(tmp_path), "PORT": str(free)}
    p = subprocess.run([str(ROOT / "scripts" / "bench.sh"), "ours", "demo-cpu", "1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = tmp_path / p.stdout.strip().split("/")[-1]
    assert out.name.endswith("-ours-demo-cpu.jsonl"), p.stdout
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["kind"] for l in lines].count("summary") == 2
    assert all(l["config"]["name"] == "demo-cpu" for l in lines)
    # The configuration's flags, with the thread count given on the command line.
    assert "--device cpu -c 8192 -t 1" in lines[0]["config"]["server_flags"]
    # The server is gone: nothing listens on its port.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free), timeout=5)
    bad = subprocess.run([str(ROOT / "scripts" / "bench.sh"), "ours", "no-such-config"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no configuration no-such-config" in bad.stderr
