"""The command line as a user meets it: errors as one line of reasons (never a backtrace,
whatever RUST_BACKTRACE says), and the shipped demo model found by a binary installed away
from the source checkout."""
import os
import shutil
import subprocess

from helpers import ROOT, binary


def test_errors_are_one_line_of_reasons(tmp_path):
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    for args, reason in [
        (["run", "-m", str(tmp_path / "nope.gguf"), "-p", "hi"], "No such file"),
        (["inspect", "/etc/hostname"], "file ends inside magic"),
    ]:
        p = subprocess.run([str(binary()), *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 1, p
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], p.stderr
        assert "backtrace" not in p.stderr.lower()


def test_default_model_next_to_an_installed_binary(tmp_path):
    bin_dir, share = tmp_path / "bin", tmp_path / "share" / "llm-server"
    bin_dir.mkdir()
    share.mkdir(parents=True)
    exe = bin_dir / "llm-server"
    shutil.copy(binary(), exe)
    shutil.copy(ROOT / "models" / "demo-moe-f16.gguf", share)
    p = subprocess.run([str(exe), "run", "-p", "Hello", "-n", "2", "-t", "1", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # Found beside the binary (bin/../share/llm-server), not in the source checkout.
    assert f"model: {bin_dir}/../share/llm-server/demo-moe-f16.gguf" in p.stderr, p.stderr


def test_prompts_in_pieces_give_the_same_tokens():
    """llama.cpp's -b/-ub: a prompt goes through the model min(b, ub) tokens a call; greedy
    output is the same whatever the piece size (the DeltaNet state and KV cache carry over)."""
    prompt = (ROOT / "tests" / "data" / "wikitext-2-raw" / "wiki.test.raw").read_bytes()[:1500]
    prompt = prompt.decode().replace("\r", "")
    outs = []
    for extra in [[], ["-ub", "16"], ["-b", "7"]]:
        p = subprocess.run([str(binary()), "run", "-p", prompt, "-n", "12", "--temp", "0",
                            "--device", "cpu", "-t", "2", *extra],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] and outs[0] == outs[1] == outs[2], outs
