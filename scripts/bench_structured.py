#!/usr/bin/env python3
"""Decode speed with and without structured output (issue 12 req. 3: the drop must stay under
10%): for each model, `llm-server serve`, then R requests of 128 tokens each way — plain text
with ignore_eos, and a json_schema answer whose one string field runs on — reading each
generation's decode rate from the server's log line. Prints a markdown table.

    .venv/bin/python scripts/bench_structured.py MODEL.gguf [MODEL.gguf ...] [-t THREADS] [-r R]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"],
    "additionalProperties": False}}}


def post(url, body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("-t", "--threads", default="2")
    ap.add_argument("-r", "--reps", type=int, default=5)
    a = ap.parse_args()
    print("| model | vocab | plain decode tok/s | json_schema decode tok/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for model in a.models:
        log = Path(tempfile.mkstemp(suffix=".log")[1])
        with open(log, "w") as err:
            p = subprocess.Popen([str(ROOT / "target/release/llm-server"), "serve", "-m", model,
                                  "--port", "0", "-t", a.threads, "-c", "2048", "--alias", "m",
                                  "--cache-ram", "0"],
                                 stdout=subprocess.PIPE, stderr=err, text=True)
        url = p.stdout.readline().split()[-1]
        msgs = [{"role": "user", "content": "Tell me a long story about a whale."}]
        try:
            for i in range(a.reps):
                post(url, dict(model="m", messages=msgs, max_tokens=128, temperature=0.7, seed=i,
                               ignore_eos=True))
                post(url, dict(model="m", messages=msgs, max_tokens=128, temperature=0.7, seed=i,
                               response_format=SCHEMA))
            time.sleep(0.5)
        finally:
            p.terminate()
            p.wait()
        rates = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(
            r"generated_tokens=(\d+) decode_s=\S+ decode_tok_s=(\S+)", log.read_text())]
        plain = [r for n, r in rates[0::2] if n > 16]
        constrained = [r for n, r in rates[1::2] if n > 16]
        vocab = subprocess.run([str(ROOT / "target/release/llm-server"), "inspect", model, "--json",
                                "--no-tensors"], capture_output=True, text=True)
        n_vocab = json.loads(vocab.stdout)["metadata"]["tokenizer.ggml.tokens"]["len"] \
            if vocab.returncode == 0 else "?"
        pm, cm = statistics.median(plain), statistics.median(constrained)
        print(f"| {Path(model).name} | {n_vocab} | {pm:.1f} | {cm:.1f} | {cm / pm:.3f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
