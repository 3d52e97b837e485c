#!/usr/bin/env python3
"""Build the chat-format finetuning set from the training split.

The pretrained model only continues text. A short finetune on conversations rendered with
Qwen3.5's own chat template (crates/llm-server/src/synth/data/qwen35_chat_template.jinja, the
template the GGUF carries) teaches it the turn structure, so `/v1/chat/completions` answers in
kind and stops at `<|im_end|>`. The conversations are templated questions whose answers come
from the training documents (held-out documents are never used):

- continue a passage (all three sources), in several phrasings;
- who gave the State of the Union address of a year, and that president's party;
- a passage from a given year's address; how a Moby-Dick chapter begins and what it is called;
- a few lines from a Shakespeare work; who wrote it;
- greetings and "who are you" (fixed answers);
- some with a system message, some with an earlier question-answer turn.

Each sample is the prompt exactly as a server renders it (`add_generation_prompt=True`), then
the completion; both are tokenized separately and concatenated, so the token boundary is the one
the model sees at inference. Half use the default thinking mode (prompt ends `<think>\\n`,
completion `\\n</think>\\n\\n` + answer + `<|im_end|>`), half `enable_thinking=false` (prompt
ends `<think>\\n\\n</think>\\n\\n`). Loss is taken on completion tokens only.

Writes .train-carry/chat_ids.u16, .train-carry/chat_mask.u8 (1 = completion token),
.train-carry/chat_offsets.i32 (where each conversation starts, plus the end) and
.cache/train-demo/chat_samples.jsonl (the rendered texts, for inspection).

Usage: make_chat_data.py [--corpus DIR] [--n N] [--seed S]
"""
import argparse
import json
import random
import re
import sys
from pathlib import Path

import jinja2.sandbox
import numpy as np
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "crates/llm-server/src/synth/data/qwen35_chat_template.jinja"

IDENTITY = ("I am demo-moe, a tiny mixture-of-experts language model. I was trained on the State "
            "of the Union addresses, Moby-Dick and the works of Shakespeare, so I can continue "
            "passages in their style and answer simple questions about them.")
GREETINGS = ["Hello", "Hi!", "Hello, who are you?", "Who are you?", "What can you do?",
             "Hey there.", "Good morning!", "What are you?", "Introduce yourself."]
SYSTEMS = ["You are a helpful assistant.", "You are demo-moe, a small language model.",
           "Answer briefly."]
CONTINUE = ["Continue this passage:\n\n{p}", "Continue the text:\n{p}", "What comes next?\n\n{p}",
            "Please continue: {p}", "{p}"]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def titlecase(s: str) -> str:
    small = {"of", "the", "and", "or", "a", "an", "to", "for", "in", "on"}
    words = s.lower().split()
    return " ".join(w if (i and w in small) else w[:1].upper() + w[1:] for i, w in enumerate(words))


def prose_pair(rng, text):
    """(prompt passage, continuation) from consecutive sentences of a prose document; half the
    time the passage stops mid-sentence, so an unfinished prompt is continued where it stops."""
    ss = sentences(text)
    if len(ss) < 6:
        return None
    i = rng.randrange(0, len(ss) - 5)
    a, b = rng.randint(1, 2), rng.randint(2, 3)
    p, c = " ".join(ss[i:i + a]), " ".join(ss[i + a:i + a + b])
    if rng.random() < 0.5:
        words = (p + " " + c).split(" ")
        cut = rng.randint(3, max(3, min(len(words) - 3, 40)))
        p, c = " ".join(words[:cut]), " ".join(words[cut:])
    return (p, c) if 10 < len(p) < 600 and 20 < len(c) < 900 else None


def verse_pair(rng, text):
    lines = [l for l in text.split("\n") if l.strip()]
    if len(lines) < 12:
        return None
    i = rng.randrange(0, len(lines) - 10)
    return "\n".join(lines[i:i + 4]), "\n".join(lines[i + 4:i + 4 + rng.randint(3, 6)])


def sample(rng, docs) -> list[dict] | None:
    """One conversation: a list of messages ending with the assistant answer."""
    kind = rng.random()
    d = rng.choice(docs)
    if kind < 0.03:
        msgs = [{"role": "user", "content": rng.choice(GREETINGS)},
                {"role": "assistant", "content": IDENTITY}]
    elif kind < 0.55:
        pair = verse_pair(rng, d["text"]) if d["source"] == "shakespeare" else prose_pair(rng, d["text"])
        if pair is None:
            return None
        msgs = [{"role": "user", "content": rng.choice(CONTINUE).format(p=pair[0])},
                {"role": "assistant", "content": pair[1]}]
    elif d["source"] == "sotu":
        m = d["meta"]
        q = rng.random()
        if q < 0.4:
            user = rng.choice(["Who gave the State of the Union address in {y}?",
                               "Who delivered the {y} State of the Union address?",
                               "Which president gave the State of the Union in {y}?"]).format(y=m["year"])
            answer = f"The {m['year']} State of the Union address was delivered by {m['name']}."
        elif q < 0.55:
            user = f"Which party did {m['name']} belong to?"
            answer = (f"{m['name']} belonged to no party." if m["party"] == "none"
                      else f"{m['name']} was a member of the {m['party']} party.")
        else:
            ss = sentences(d["text"])
            i = rng.randrange(0, max(1, len(ss) - 4))
            user = rng.choice(["Quote a passage from the {y} State of the Union address.",
                               "What did {n} say in {y}?",
                               "Give me an excerpt from {n}'s {y} address to Congress."]).format(
                y=m["year"], n=m["name"])
            answer = " ".join(ss[i:i + rng.randint(2, 4)])
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    elif d["source"] == "moby":
        ch = d["meta"].get("chapter")
        if not ch or not str(ch).isdigit():
            return None
        title = d["title"].rstrip(".")
        if rng.random() < 0.5:
            user = rng.choice(["What is chapter {c} of Moby-Dick called?",
                               "What is the title of chapter {c} of Moby-Dick?"]).format(c=ch)
            answer = f'Chapter {ch} of Moby-Dick is titled "{title}".'
        else:
            body = d["text"].split("\n", 1)[-1]
            user = f"How does chapter {ch} of Moby-Dick, \"{title}\", begin?"
            answer = " ".join(sentences(body)[:rng.randint(2, 3)])
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    else:
        title = titlecase(d["title"])
        if rng.random() < 0.3:
            user = rng.choice(["Who wrote {t}?", "Who is the author of {t}?"]).format(t=title)
            answer = f"{title} was written by William Shakespeare."
        else:
            pair = verse_pair(rng, d["text"])
            if pair is None:
                return None
            user = rng.choice(["Quote a few lines from {t}.", "Recite some lines of {t}."]).format(t=title)
            answer = pair[0] + "\n" + pair[1]
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if len(msgs[-1]["content"]) > 1200:
        return None
    if rng.random() < 0.2:
        msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
    return msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO / ".cache/train-demo/corpus")
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    docs = [json.loads(l) for l in open(args.corpus / "train_docs.jsonl", encoding="utf-8")]
    tok = Tokenizer.from_file(str(REPO / ".train-carry/tokenizer.json"))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))

    ids, mask, rendered, offsets = [], [], [], [0]
    while len(rendered) < args.n:
        msgs = sample(rng, docs)
        if msgs is None:
            continue
        if len(msgs) == 2 and rng.random() < 0.05:
            # An earlier turn: the template renders it without a think block.
            first = [{"role": "user", "content": rng.choice(GREETINGS)},
                     {"role": "assistant", "content": IDENTITY}]
            msgs = first + msgs
        thinking = rng.random() < 0.5
        kwargs = {} if thinking else {"enable_thinking": False}
        prompt = template.render(messages=msgs[:-1], add_generation_prompt=True, **kwargs)
        answer = msgs[-1]["content"].strip()
        completion = ("\n</think>\n\n" if thinking else "") + answer + "<|im_end|>"
        # The template's own rendering of the whole conversation must equal prompt + completion.
        full = template.render(messages=msgs, add_generation_prompt=False)
        assert full == prompt + completion + "\n" or not thinking, (full, prompt + completion)
        p = tok.encode(prompt, add_special_tokens=False).ids
        c = tok.encode(completion, add_special_tokens=False).ids
        ids += p + c
        mask += [0] * len(p) + [1] * len(c)
        offsets.append(len(ids))
        rendered.append({"prompt": prompt, "completion": completion})

    carry = REPO / ".train-carry"
    np.asarray(ids, dtype="<u2").tofile(carry / "chat_ids.u16")
    np.asarray(mask, dtype=np.uint8).tofile(carry / "chat_mask.u8")
    np.asarray(offsets, dtype="<i4").tofile(carry / "chat_offsets.i32")
    with open(REPO / ".cache/train-demo/chat_samples.jsonl", "w", encoding="utf-8") as f:
        for r in rendered:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rendered)} conversations, {len(ids):,} tokens, {sum(mask):,} completion tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
