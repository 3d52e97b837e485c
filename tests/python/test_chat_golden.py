"""The chat-template golden files (tests/golden/chat) against their two references.

crates/engine/tests/chat.rs checks that `engine::chat` renders every golden case byte for
byte. Here the golden files themselves are checked: against jinja2 set up as Hugging Face
does (when jinja2 is installed), and against llama.cpp's own renderer (`/apply-template` of
the llama-server inside xllamacpp, on the real small models), so our prompts equal
llama-server's except where the two references disagree, listed in LLAMA_CPP_DIFFERS.
"""
import importlib.util
import json
import os
from pathlib import Path

import pytest

from helpers import ROOT

GOLDEN = ROOT / "tests/golden/chat"
TEMPLATES = ["qwen35", "smollm2", "qwen25coder", "gemma3", "chatml_fallback"]

# Where llama-server's prompt differs from HF's by design, not by a rendering difference:
#  * `prefill`: the conversation ends with an assistant turn and no generation prompt;
#    llama-server treats that turn as a prefix for the reply (prefill_assistant) and cuts
#    its end-of-turn. Our server may do the same on top of `render`, which is HF's.
#  * `null content`: HF raises on `'...' + None` (assistant turn with only tool_calls);
#    llama.cpp turns a null content into "". We keep HF's error.
#  * `float`: llama.cpp prints the tool-call argument 1.0 as 1; Python (and we) print 1.0.
LLAMA_CPP_DIFFERS = {
    ("smollm2", "one_tool_call_one_result"): "null content",
    ("chatml_fallback", "one_tool_call_one_result"): "null content",
    ("qwen35", "tool_call_scalar_args"): "float",
    ("qwen25coder", "tool_call_scalar_args"): "float",
}


def make_golden():
    spec = importlib.util.spec_from_file_location(
        "make_golden", ROOT / "tools/chat-golden/make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(name):
    return json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.mark.parametrize("name", TEMPLATES)
def test_golden_inputs_are_the_cases(name):
    cases = json.loads((ROOT / "tools/chat-golden/cases.json").read_text())["cases"]
    rows = load(name)["cases"]
    strip = [{k: v for k, v in r.items()
              if k not in ("expected", "expected_error", "llama_cpp")} for r in rows]
    assert strip == cases, "rerun tools/chat-golden/make_golden.py"


@pytest.mark.parametrize("name", TEMPLATES)
def test_golden_matches_hf_jinja2(name):
    pytest.importorskip("jinja2")
    mg = make_golden()
    env = mg.build_env()
    doc = load(name)
    src, bos, eos = doc["template"], doc["bos_token"], doc["eos_token"]
    assert mg.supports_typed_content(env, src, bos, eos) == doc["typed_content"]
    for row in doc["cases"]:
        got = mg.expectation(env, src, row, doc["typed_content"], bos, eos)
        want = {k: row[k] for k in ("expected", "expected_error") if k in row}
        assert got == want, row["name"]


def model_path(fname):
    for p in os.environ.get("LLM_SERVER_MODELS", "").split(os.pathsep):
        if p and Path(p).name == fname and Path(p).exists():
            return p
    pytest.skip(f"{fname} not cached: run scripts/fetch-models.py")


@pytest.mark.parametrize("name", TEMPLATES)
def test_golden_matches_llama_cpp(name):
    pytest.importorskip("xllamacpp")
    mg = make_golden()
    doc = load(name)
    model = {"qwen35": "qwen25coder", "chatml_fallback": "gemma3"}.get(name, name)
    # For chatml_fallback llama.cpp picks the template itself: the gemma GGUF has none.
    override = None if name == "chatml_fallback" else doc["template"]
    outs = mg.llama_cpp_outputs(model_path(mg.MODEL_FILE[model]), override, doc["cases"])
    for row, out in zip(doc["cases"], outs):
        prefill = row["messages"][-1]["role"] == "assistant" and not row["add_generation_prompt"]
        if prefill:
            continue
        if (name, row["name"]) in LLAMA_CPP_DIFFERS:
            continue
        if "expected_error" in row:
            assert "error" in out, (row["name"], out)
            continue
        want = row["expected"]
        # llama.cpp drops a leading BOS text because its tokenizer adds the BOS token
        # (tokenizer.ggml.add_bos_token); the tokenizer must not add a second one.
        if doc["bos_token"] and want.startswith(doc["bos_token"]) and name == "gemma3":
            want = want[len(doc["bos_token"]):]
        assert out.get("prompt") == want, row["name"]
