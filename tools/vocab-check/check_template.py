#!/usr/bin/env python3
"""Render the vendored Qwen3.5 chat template the way HF's apply_chat_template does (jinja2,
trim_blocks/lstrip_blocks, `raise_exception`, `tojson`) and compare with known outputs.

The reference for case 1 is llama-server's `example_format` line printed when it loaded a real
Qwen3.5-2B GGUF (unsloth) whose `tokenizer.chat_template` is this template; the other cases check
the documented behaviours (tools block, enable_thinking=false, tool calls, images).

Usage: check_template.py [TEMPLATE]   (default: the file next to synth/vocab.rs)
"""
import json
import sys
from pathlib import Path

import jinja2

DEFAULT = Path(__file__).resolve().parents[2] / "crates/llm-server/src/synth/data/qwen35_chat_template.jinja"


def render(source: str, **context) -> str:
    def raise_exception(message):
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(**context)


def main() -> int:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT).read_text(encoding="utf-8")
    failures = 0

    def expect(name: str, got: str, want: str) -> None:
        nonlocal failures
        ok = got == want
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            print(f"  got:  {got!r}\n  want: {want!r}")

    chat = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "How are you?"},
    ]
    expect("llama-server example_format", render(source, messages=chat, add_generation_prompt=True),
           "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
           "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
           "<|im_start|>assistant\n<think>\n")
    expect("enable_thinking=false", render(source, messages=chat[1:2], add_generation_prompt=True,
                                           enable_thinking=False),
           "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    expect("image item", render(source, messages=image),
           "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n")
    tool_turn = [
        {"role": "user", "content": "Weather in Bern?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Bern"}}}]},
        {"role": "tool", "content": "12 C"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    out = render(source, messages=tool_turn, tools=tools, add_generation_prompt=True)
    expect("tools block first", out.split("<tools>")[0], "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n")
    expect("tool call + response", out.split("<|im_end|>\n", 2)[2],
           "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\n<tool_call>\n<function=get_weather>\n"
           "<parameter=city>\nBern\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
           "<|im_start|>user\n<tool_response>\n12 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n")
    print("OK" if failures == 0 else "FAILED")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
