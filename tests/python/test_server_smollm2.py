"""Both APIs with their official clients on a real model besides the demo: SmolLM2-135M
Instruct (Q4_1, ChatML-style template, no thinking or tool-call format of its own), fetched
by scripts/fetch-models.py. Whole and streamed replies agree, tokens are counted the same
way by the reply and by count_tokens, embeddings come out normalised, logprobs are
consistent."""
import math

import anthropic
import pytest
from openai import OpenAI

from test_server import Server, smol_path

MSG = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve") / "server.log", "-m", smol_path(),
               "--alias", "smol", "-c", "2048")
    yield s
    s.stop()


def test_openai_chat_whole_stream_logprobs(server):
    c = OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
    args = dict(model="smol", messages=MSG, max_tokens=12, temperature=0)
    whole = c.chat.completions.create(**args, logprobs=True, top_logprobs=2)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].message.model_extra.get("reasoning_content") is None
    streamed = "".join(ch.choices[0].delta.content or ""
                       for ch in c.chat.completions.create(**args, stream=True) if ch.choices)
    assert streamed == text
    items = whole.choices[0].logprobs.content
    assert len(items) == whole.usage.completion_tokens
    assert all(i.token == i.top_logprobs[0].token for i in items)  # greedy
    e = c.embeddings.create(model="smol", input=["Paris", "Berlin"])
    assert all(abs(math.sqrt(sum(x * x for x in d.embedding)) - 1) < 1e-4 for d in e.data)


def test_anthropic_messages_and_count(server):
    a = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    kw = dict(model="smol", max_tokens=12, messages=MSG, system="Answer briefly.",
              extra_body={"temperature": 0})
    whole = a.messages.create(**kw)
    assert whole.content[0].type == "text" and whole.content[0].text
    with a.messages.stream(**kw) as s:
        final = s.get_final_message()
    assert final.content[0].text == whole.content[0].text
    n = a.messages.count_tokens(model="smol", messages=MSG, system="Answer briefly.")
    assert n.input_tokens == whole.usage.input_tokens
