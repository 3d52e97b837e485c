"""The prompt cache (issue 12 req. 6) over real HTTP with the official clients: a 5-turn chat
where turns 2–5 prefill only what is new since the previous prompt (`usage.prompt_tokens_details.
cached_tokens`: everything up to where the previous turn's generation prompt began), the same conversation greedy with the cache off giving the same replies, the
same prompt twice needing no prefill at all, the Anthropic usage field, `/metrics`; on the demo
model (DeltaNet layers: resumes from checkpoints) and on SmolLM2 (attention only: resumes
anywhere in the shared prefix)."""
import re
import urllib.request

import anthropic
import pytest

from test_server import Server, smol_path

QUESTIONS = ["Tell me about the whale.", "And the ship?", "Who is the captain?",
             "Where do they sail?", "How does it end?"]


def chat(server, alias: str, turns: int = 5, max_tokens: int = 8):
    """Play the conversation; per turn (prompt tokens, cached tokens, reply)."""
    c = server.client()
    messages, out = [], []
    for q in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": q})
        r = c.chat.completions.create(model=alias, messages=messages, max_tokens=max_tokens,
                                      temperature=0)
        reply = r.choices[0].message.content or ""
        out.append((r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens, reply))
        messages.append({"role": "assistant", "content": reply})
    return out


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as res:
        text = res.read().decode()
    m = re.search(rf"^llm_server_{name} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def servers(tmp_path_factory, model_args):
    on = Server(tmp_path_factory.mktemp("cache-on") / "server.log", *model_args)
    off = Server(tmp_path_factory.mktemp("cache-off") / "server.log", *model_args,
                 "--cache-ram", "0")
    return on, off


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    on, off = servers(tmp_path_factory, ["--alias", "demo", "-c", "4096"])
    yield on, off
    on.stop()
    off.stop()


def check_conversation(on, off, alias):
    cached = chat(on, alias)
    plain = chat(off, alias)
    # The same replies, greedy, with and without the cache.
    assert [r for _, _, r in cached] == [r for _, _, r in plain]
    # Turn 1 had nothing to reuse. Every later turn reused the whole previous conversation
    # up to where its generation prompt began (the history renders a reply without it), so
    # it prefills only that generation prompt's few tokens again, the reply and the new
    # question: the same small gap every turn. (A model without recurrent layers resumes
    # anywhere in the shared prefix, the reply's tokens included where they re-tokenize the
    # same: the gap can be negative.)
    assert cached[0][1] == 0
    gaps = [p0 - c1 for (p0, _, _), (_, c1, _) in zip(cached, cached[1:])]
    assert len(set(gaps)) == 1 and gaps[0] <= 16, cached
    assert all(0 < c < p for p, c, _ in cached[1:]), cached
    # Without the cache nothing is reused.
    assert all(c == 0 for _, c, _ in plain)
    return cached


def test_five_turns_prefill_only_new_tokens_demo(demo):
    on, off = demo
    check_conversation(on, off, "demo")
    assert metric(on, "prompt_cache_hits_total") >= 4
    assert metric(on, "prompt_cache_bytes") > 0  # DeltaNet checkpoints
    assert metric(on, "prompt_tokens_cached_total") > 0
    assert metric(off, "prompt_cache_hits_total") == 0


def test_same_prompt_again_needs_no_prefill(demo):
    on, _ = demo
    c = on.client()
    kw = dict(model="demo", messages=[{"role": "user", "content": "Call me Ishmael."}],
              max_tokens=6, temperature=0)
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert b.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content
    # n > 1: each further choice starts from the cached prompt.
    r = c.chat.completions.create(**kw, n=2)
    assert r.choices[0].message.content == r.choices[1].message.content


def test_a_shared_system_prompt_is_reused(demo):
    """Classification's pattern: one long instruction, a different item each time. The
    sequence is checkpointed where the system message ends, so the next item resumes there."""
    on, off = demo
    system = {"role": "system", "content": "Label the sentiment of the sentence as positive, "
              "negative or neutral. Answer with one word. " * 4}
    replies = {}
    for s in (on, off):
        c = s.client()
        replies[s] = []
        for item in ("The whale was kind.", "The storm sank the ship.", "It rained."):
            r = c.chat.completions.create(model="demo", max_tokens=3, temperature=0,
                                          messages=[system, {"role": "user", "content": item}])
            replies[s].append((r.usage.prompt_tokens_details.cached_tokens,
                               r.choices[0].message.content))
    cached = [c for c, _ in replies[on]]
    assert cached[1] > 40 and cached[2] == cached[1], replies[on]
    assert [t for _, t in replies[on]] == [t for _, t in replies[off]]


def test_anthropic_usage_reports_cache_reads(demo):
    on, _ = demo
    client = anthropic.Anthropic(base_url=on.url, api_key="x", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "What is a harpoon?"}]
    first = client.messages.create(model="demo", max_tokens=6, messages=msgs,
                                   extra_body={"temperature": 0})
    again = client.messages.create(model="demo", max_tokens=6, messages=msgs,
                                   extra_body={"temperature": 0})
    assert again.usage.cache_read_input_tokens == again.usage.input_tokens > 0
    assert first.content[0].text == again.content[0].text


def test_five_turns_attention_only_model(tmp_path_factory):
    on, off = servers(tmp_path_factory, ["-m", smol_path(), "--alias", "smol", "-c", "2048"])
    try:
        check_conversation(on, off, "smol")
        # The same prompt twice: the second from the kept logits, the same answer.
        kw = dict(model="smol", messages=[{"role": "user", "content": "What is the capital of "
                                           "France?"}], max_tokens=8, temperature=0)
        a, b = (on.client().chat.completions.create(**kw) for _ in range(2))
        assert b.usage.prompt_tokens_details.cached_tokens == b.usage.prompt_tokens
        assert a.choices[0].message.content == b.choices[0].message.content != ""
        # No recurrent state: positions only, no checkpoint bytes beyond the kept logits.
        assert metric(on, "prompt_cache_hits_total") >= 4
    finally:
        on.stop()
        off.stop()
