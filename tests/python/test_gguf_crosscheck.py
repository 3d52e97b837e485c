"""The gguf crate against gguf-py: byte-identical rewrite of a gguf-py file with every value
type, and gguf-py reads our writer's output back (crates/gguf/tests/crosscheck.py)."""
import subprocess
import sys

from helpers import ROOT


def test_gguf_crosscheck_with_gguf_py():
    script = ROOT / "crates" / "gguf" / "tests" / "crosscheck.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
