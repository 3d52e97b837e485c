#!/usr/bin/env python3
"""Golden chat-template renderings for `engine::chat` (tests/golden/chat/*.json).

Renders each template with a jinja2 environment built the way Hugging Face transformers
builds it (`_compile_jinja_template` in `transformers/utils/chat_template_utils.py`):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loopcontrols), HF's own
`tojson` (json.dumps, ensure_ascii=False), `raise_exception` and `strftime_now` (a fixed
clock here, so the files are reproducible). The context is what `apply_chat_template`
passes: messages, tools (None when absent), documents=None, add_generation_prompt,
bos_token, eos_token, then the chat_template_kwargs (enable_thinking and extras).

Before rendering, the OpenAI-style request goes through `normalize()`, the same
preparation `engine::chat` applies (see crates/engine/src/chat/messages.rs):
  * tool-call `function.arguments` JSON strings are parsed into objects, as llama.cpp does,
    because templates iterate them as mappings (`arguments|items`) or re-dump them (`tojson`);
  * an empty tools list is passed as None, as llama.cpp does;
  * content given as a list of parts is kept as a list when the template renders typed
    content (probed once, as llama.cpp's capability check does), else its text parts are
    joined with "\\n" into a string (llama.cpp's `concat_typed_text`).

Each case records either `expected` (the exact text) or `expected_error` (the exception's
message and whether the template raised it itself). With --llama-cpp, the raw request is
also sent to llama.cpp's `/apply-template` (the xllamacpp wheel, CPU) and stored as
`llama_cpp` for comparison; the Rust test does not read it.

Usage: make_golden.py [--llama-cpp] [--out tests/golden/chat]
Needs: jinja2; gguf (to read the small models' templates from their GGUFs, found through
scripts/fetch-models.py --print-env); xllamacpp for --llama-cpp.
"""

import argparse
import copy
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# 2026-01-15 12:34:56 UTC: the clock `strftime_now` sees in every golden file.
NOW_UNIX = 1768480496
NEEDLE = "<<typed-content-probe>>"

# llama.cpp's CHATML_TEMPLATE_SRC (common/chat.cpp), used when a GGUF has no template.
CHATML = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\n' -}}\n"
    "{%- endif -%}"
)


class TemplateRaised(Exception):
    """What `raise_exception` throws (HF raises jinja2's TemplateError)."""


def build_env():
    # Imported here so tests that only need llama_cpp_outputs() run without jinja2.
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateRaised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.fromtimestamp(NOW_UNIX, datetime.timezone.utc).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, ctx):
    return env.from_string(source).render(**ctx)


def supports_typed_content(env, source, bos, eos):
    probe = [{"role": "user", "content": [{"type": "text", "text": NEEDLE}]}]
    ctx = {"messages": probe, "tools": None, "documents": None, "add_generation_prompt": True,
           "bos_token": bos, "eos_token": eos}
    try:
        return NEEDLE in render(env, source, ctx)
    except Exception:
        return False


def normalize(messages, typed):
    out = copy.deepcopy(messages)
    for m in out:
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                try:
                    parsed = json.loads(fn["arguments"])
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    fn["arguments"] = parsed
        if isinstance(m.get("content"), list) and not typed:
            texts = [p.get("text", "") for p in m["content"]
                     if isinstance(p, dict) and p.get("type") == "text"]
            m["content"] = "\n".join(texts)
    return out


def context(case, typed, bos, eos):
    tools = case.get("tools") or None
    ctx = {"messages": normalize(case["messages"], typed), "tools": tools, "documents": None,
           "add_generation_prompt": case["add_generation_prompt"],
           "bos_token": bos, "eos_token": eos}
    ctx.update(case.get("extra") or {})
    if case.get("enable_thinking") is not None:
        ctx["enable_thinking"] = case["enable_thinking"]
    return ctx


def model_templates():
    """(name, source, bos, eos, origin) for each template under test."""
    import gguf

    env = subprocess.run([sys.executable, str(ROOT / "scripts/fetch-models.py"), "--print-env"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"LLM_SERVER_MODELS='([^']*)'", env)
    paths = {Path(p).name: p for p in (m.group(1).split(":") if m else [])}

    def read(fname):
        r = gguf.GGUFReader(paths[fname])
        f = r.fields
        toks = f["tokenizer.ggml.tokens"].contents()
        tmpl = f["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in f else None

        def tok(key):
            return toks[f[key].contents()] if key in f else ""
        return tmpl, tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id")

    out = []
    qwen35 = (ROOT / "crates/llm-server/src/synth/data/qwen35_chat_template.jinja").read_text()
    out.append(("qwen35", qwen35, "<|endoftext|>", "<|im_end|>", "qwen25coder",
                "crates/llm-server/src/synth/data/qwen35_chat_template.jinja"))
    for name, fname in [("smollm2", "SmolLM2-135M-Instruct-Q4_1.gguf"),
                        ("qwen25coder", "Qwen2.5-Coder-0.5B-Q4_K_M.gguf")]:
        tmpl, bos, eos = read(fname)
        out.append((name, tmpl, bos, eos, name, f"{fname} tokenizer.chat_template"))
    _, bos, eos = read("gemma-3-270m-Q4_K_M.gguf")
    gemma = (HERE / "templates/gemma3-it.jinja").read_text()
    out.append(("gemma3", gemma, bos, eos, "gemma3",
                "google/gemma-3-270m-it tokenizer_config.json (the ggml-org GGUF has none)"))
    out.append(("chatml_fallback", CHATML, bos, eos, "gemma3",
                "llama.cpp CHATML_TEMPLATE_SRC (what llama.cpp uses for gemma-3-270m's GGUF)"))
    return out, paths


def llama_cpp_outputs(model_path, source, cases):
    """Renders each raw case with llama.cpp's /apply-template (in-process llama-server)."""
    import urllib.error
    import urllib.request

    import xllamacpp as xl

    p = xl.CommonParams()
    p.model.path = model_path
    p.n_ctx = 512
    p.n_parallel = 1
    p.cpuparams.n_threads = 2
    p.warmup = False
    p.use_jinja = True
    if source is not None:
        p.chat_template = source
    server = xl.Server(p)
    outs = []
    for case in cases:
        body = {"messages": case["messages"], "add_generation_prompt": case["add_generation_prompt"]}
        if case.get("tools"):
            body["tools"] = case["tools"]
        kwargs = dict(case.get("extra") or {})
        if case.get("enable_thinking") is not None:
            kwargs["enable_thinking"] = case["enable_thinking"]
        if kwargs:
            body["chat_template_kwargs"] = kwargs
        req = urllib.request.Request(server.listening_address + "/apply-template",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            outs.append({"prompt": json.loads(urllib.request.urlopen(req).read())["prompt"]})
        except urllib.error.HTTPError as e:
            outs.append({"error": e.read().decode(errors="replace")[:300]})
    del server
    return outs


def expectation(env, source, case, typed, bos, eos):
    """{"expected": text} or {"expected_error": {"raised": bool, "message": str}}."""
    import jinja2

    try:
        return {"expected": render(env, source, context(case, typed, bos, eos))}
    except TemplateRaised as e:
        return {"expected_error": {"raised": True, "message": str(e)}}
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        return {"expected_error": {"raised": False, "message": f"{type(e).__name__}: {e}"}}


MODEL_FILE = {"qwen25coder": "Qwen2.5-Coder-0.5B-Q4_K_M.gguf",
              "smollm2": "SmolLM2-135M-Instruct-Q4_1.gguf",
              "gemma3": "gemma-3-270m-Q4_K_M.gguf"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests/golden/chat"))
    ap.add_argument("--llama-cpp", action="store_true")
    args = ap.parse_args()
    cases = json.loads((HERE / "cases.json").read_text())["cases"]
    env = build_env()
    templates, paths = model_templates()
    for name, source, bos, eos, model, origin in templates:
        typed = supports_typed_content(env, source, bos, eos)
        rows = []
        for case in cases:
            rows.append({**case, **expectation(env, source, case, typed, bos, eos)})
        if args.llama_cpp:
            # The chatml fallback is what llama.cpp picks on its own for a template-less GGUF.
            override = None if name == "chatml_fallback" else source
            for row, out in zip(rows, llama_cpp_outputs(paths[MODEL_FILE[model]], override, cases)):
                row["llama_cpp"] = out
        doc = {"template_name": name, "origin": origin, "template": source, "bos_token": bos,
               "eos_token": eos, "now_unix": NOW_UNIX, "typed_content": typed,
               "generator": "tools/chat-golden/make_golden.py", "cases": rows}
        path = Path(args.out) / f"{name}.json"
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        n_err = sum("expected_error" in r for r in rows)
        print(f"{path}: {len(rows)} cases ({n_err} errors), typed_content={typed}")


if __name__ == "__main__":
    os.environ.setdefault("LLAMA_LOG_VERBOSITY", "0")
    main()
