"""The container packaging, as far as it can be tested without a container runtime (none
runs here, and images cannot be pulled): the Dockerfile passes a Dockerfile linter from the
npm registry (the one behind the VS Code Docker language server; scripts/test.sh installs
it), has the shape the README promises (pinned versions, a non-root user, a health check on
/health, models as a volume), and its entrypoint and command — and the compose file's
command for our server — start our binary with exactly those flags."""
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, binary

LINT = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "dockerfile-utils"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_lints_clean(tmp_path):
    if not LINT.exists():
        pytest.fail(f"{LINT} missing: scripts/test.sh installs it (npm)")
    ok = subprocess.run([str(LINT), "lint", str(DOCKERFILE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The linter does find errors: a bad flag fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("--interval=30s", "--intervall=30s"))
    assert subprocess.run([str(LINT), "lint", str(bad)], capture_output=True).returncode != 0


def test_dockerfile_shape():
    ins = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["RUST_VERSION"])
    assert args["CUDA_IMAGE"] == "nvidia/cuda:12.8.1-runtime-ubuntu24.04"
    froms = [a for w, a in ins if w == "FROM"]
    assert froms == ["rust:${RUST_VERSION}-bookworm AS build", "${CUDA_IMAGE} AS runtime"]
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [a for w, a in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "http://127.0.0.1:8080/health" in health[0]
    assert ("VOLUME", '["/models"]') in ins
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignore and ".venv/" in ignore


def wait_listening(proc) -> str:
    for line in proc.stdout:
        if line.startswith("listening on "):
            return line.split()[-1]
    pytest.fail("the server did not start")


def run_server(argv: list[str]) -> None:
    """Start our binary with `argv` (port 0 and loopback instead of 8080 and every address),
    check /health, stop it."""
    argv = [{"8080": "0", "0.0.0.0": "127.0.0.1"}.get(a, a) for a in argv]
    proc = subprocess.Popen([str(binary()), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = wait_listening(proc)
        with urllib.request.urlopen(url + "/health", timeout=10) as res:
            assert json.loads(res.read()) == {"status": "ok"}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_entrypoint_and_command_start_the_server():
    ins = dict(instructions(DOCKERFILE))
    assert json.loads(ins["ENTRYPOINT"]) == ["llm-server"]
    cmd = json.loads(ins["CMD"])
    assert cmd[0] == "serve"
    # In the image the demo model sits in /usr/local/share/llm-server, beside /usr/local/bin:
    # found without -m, as here from the checkout.
    run_server(cmd)


def test_compose_profiles_and_our_command():
    c = yaml.safe_load(COMPOSE.read_text())
    ours, theirs = c["services"]["llm-server"], c["services"]["llama-server"]
    assert ours["profiles"] == ["llm-server"] and theirs["profiles"] == ["llama-server"]
    assert theirs["image"].endswith("${LLAMA_CPP_REF:-b11549}")
    assert ours["build"]["args"]["CUDA_IMAGE"] == "nvidia/cuda:12.8.1-runtime-ubuntu24.04"
    for s in (ours, theirs):
        assert "./models:/models:ro" in s["volumes"] and s["ports"] == ["8080:8080"]
        assert s["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    # Our command with compose's defaults filled in (the demo model for MODEL, a small -c).
    env = {"MODEL": "demo-moe-f16.gguf", "CTX": "4096"}
    argv = [re.sub(r"\$\{(\w+):-[^}]*\}", lambda m: env[m.group(1)], a) for a in ours["command"]]
    argv = [str(ROOT / "models" / a[len("/models/"):]) if a.startswith("/models/") else a
            for a in argv]
    run_server(argv)
