"""Anthropic's Messages API on `llm-server serve` over real HTTP on loopback, driven by the
official `anthropic` client (whole and streamed replies, system blocks, multi-turn with tool
use and results, thinking blocks, stop sequences, count_tokens, keys) and raw HTTP for the
error shape, on the shipped demo model with short replies."""
import json
import urllib.error
import urllib.request

import anthropic
import pytest

from test_server import Server, module_server

MODEL = "demo"
HELLO = [{"role": "user", "content": "Tell me about the whale."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "-c", "4096")


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def post(server, path: str, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_whole_and_streamed_replies_agree(client):
    kw = dict(model=MODEL, max_tokens=12, extra_body={"temperature": 0}, messages=HELLO)
    whole = client.messages.create(**kw)
    assert whole.type == "message" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert [b.type for b in whole.content] == ["text"]
    assert whole.stop_reason in ("end_turn", "max_tokens")
    assert whole.usage.input_tokens > 0 and 0 < whole.usage.output_tokens <= 12
    events = []
    with client.messages.stream(**kw) as stream:
        for ev in stream:
            events.append(ev.type)
        final = stream.get_final_message()
    # The whole event sequence, in order.
    assert events[0] == "message_start"
    assert "content_block_start" in events and "content_block_stop" in events
    assert events[-2:] == ["message_delta", "message_stop"]
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_system_blocks_tools_and_history(client):
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}]},
    ]
    r = client.messages.create(model=MODEL, max_tokens=8, extra_body={"temperature": 0}, tools=tools,
                               system=[{"type": "text", "text": "Be brief."}], messages=messages)
    assert r.content[-1].type == "text"
    n = client.messages.count_tokens(model=MODEL, tools=tools, system="Be brief.",
                                     messages=messages).input_tokens
    # The same prompt: count_tokens says what the reply's usage says.
    assert n == r.usage.input_tokens
    assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens < n


def test_stop_sequences_and_max_tokens(client):
    free = client.messages.create(model=MODEL, max_tokens=24, extra_body={"temperature": 0}, messages=HELLO)
    text = free.content[0].text
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    r = client.messages.create(model=MODEL, max_tokens=24, extra_body={"temperature": 0}, messages=HELLO,
                               stop_sequences=[stop])
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == stop
    assert r.content[0].text == text[:text.index(stop)]
    r = client.messages.create(model=MODEL, max_tokens=2, extra_body={"temperature": 0}, messages=HELLO)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 2


def test_thinking_enabled_gives_blocks_in_order(client):
    kw = dict(model=MODEL, max_tokens=24, extra_body={"temperature": 0}, messages=HELLO,
              thinking={"type": "enabled", "budget_tokens": 1024})
    whole = client.messages.create(**kw)
    kinds = [b.type for b in whole.content]
    # The demo model's template opens `<think>` when thinking is on: what the model writes
    # before `</think>` is a thinking block (none when it is blank), the rest the text block.
    assert kinds in (["text"], ["thinking"], ["thinking", "text"]), kinds
    assert all("</think>" not in (b.model_dump().get("text") or "") for b in whole.content)
    off = client.messages.create(model=MODEL, max_tokens=24, extra_body={"temperature": 0}, messages=HELLO)
    assert [b.type for b in off.content] == ["text"]
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == kinds
    for a, b in zip(final.content, whole.content):
        assert a.model_dump().get("thinking") == b.model_dump().get("thinking")
        assert a.model_dump().get("text") == b.model_dump().get("text")


def test_keys_both_headers(tmp_path):
    s = Server(tmp_path / "server.log", "--alias", MODEL, "--api-key", "sekrit")
    try:
        ok = anthropic.Anthropic(base_url=s.url, api_key="sekrit", max_retries=0)
        assert ok.messages.create(model=MODEL, max_tokens=2, messages=HELLO).content
        bad = anthropic.Anthropic(base_url=s.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as e:
            bad.messages.create(model=MODEL, max_tokens=2, messages=HELLO)
        assert e.value.body["error"]["type"] == "authentication_error"
        body = {"model": MODEL, "max_tokens": 2, "messages": HELLO}
        assert post(s, "/v1/messages", body, {"Authorization": "Bearer sekrit"})[0] == 200
        assert post(s, "/v1/messages", body, {"x-api-key": "sekrit"})[0] == 200
        assert post(s, "/v1/messages", body)[0] == 401
    finally:
        s.stop()


BAD = [
    (b"{not json", "invalid_request_error"),
    (b"[1]", "invalid_request_error"),
    ({"model": MODEL, "messages": HELLO}, "invalid_request_error"),  # no max_tokens
    ({"model": MODEL, "max_tokens": 0, "messages": HELLO}, "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "messages": []}, "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]},
     "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": 3}]},
     "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]},
     "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "temperature": 1.5, "messages": HELLO},
     "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "thinking": {"type": "enabled", "budget_tokens": 10},
      "messages": HELLO}, "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 4, "tool_choice": {"type": "any"}, "messages": HELLO},
     "invalid_request_error"),
    ({"model": MODEL, "max_tokens": 100000, "messages": HELLO}, "invalid_request_error"),
    ({"max_tokens": 4, "messages": HELLO}, "invalid_request_error"),  # no model
]


@pytest.mark.parametrize("body,kind", BAD)
def test_bad_requests_answer_in_anthropic_shape(server, body, kind):
    status, err = post(server, "/v1/messages", body)
    assert status == 400, err
    assert err["type"] == "error" and err["error"]["type"] == kind, err
    assert err["error"]["message"], err
