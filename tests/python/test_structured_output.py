"""Structured output (issue 12 req. 3) with the official `openai` and `anthropic` clients over
real HTTP: `response_format` `json_object` and `json_schema` (strict), and forced tool calls
(OpenAI `tool_choice` `required` or named, Anthropic `any` or `tool`), enforced by constrained
decoding (llguidance), whole and streamed, on the demo model (whose weights would never write
JSON or calls by themselves) and on SmolLM2; bad formats and schemas are 400s in the APIs'
shapes."""
import json

import anthropic

import pytest
from openai import BadRequestError

from test_server import Server, module_server, smol_path

MODEL = "demo"
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "confident": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["whale", "ship", "sea"]}, "maxItems": 3},
        "score": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["label", "confident", "tags", "score"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Classify: the whale swam past the ship."}]


def schema_format(schema=SCHEMA):
    return {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True,
                                                   "schema": schema}}


def check_verdict(text: str):
    v = json.loads(text)
    assert set(v) == {"label", "confident", "tags", "score"}
    assert v["label"] in ("positive", "negative", "neutral")
    assert isinstance(v["confident"], bool)
    assert len(v["tags"]) <= 3 and all(t in ("whale", "ship", "sea") for t in v["tags"])
    assert isinstance(v["score"], int) and 0 <= v["score"] <= 9


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "-c", "4096")


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_json_schema_is_followed_at_any_temperature(client):
    for seed in range(6):
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80,
                                           temperature=1.0, seed=seed,
                                           response_format=schema_format())
        assert r.choices[0].finish_reason == "stop", r
        check_verdict(r.choices[0].message.content)


def test_json_schema_streamed_equals_whole(client):
    kw = dict(model=MODEL, messages=ASK, max_tokens=80, temperature=0,
              response_format=schema_format())
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(**kw, stream=True) if c.choices)
    assert streamed == whole
    check_verdict(whole)


def test_json_object_is_an_object(client):
    for seed in range(4):
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                           temperature=0.7, seed=seed,
                                           response_format={"type": "json_object"})
        text = r.choices[0].message.content
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:  # cut by max_tokens: still a valid start of an object
            assert text.startswith("{")


def test_text_format_and_no_reasoning_inside_json(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0,
                                       response_format={"type": "text"})
    assert r.choices[0].message.content is not None
    # Structured output turns the template's thinking off: the JSON is the answer itself.
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=80, temperature=0,
                                       response_format=schema_format())
    assert r.choices[0].message.model_extra.get("reasoning_content") is None
    check_verdict(r.choices[0].message.content)


@pytest.mark.parametrize("fmt,extra,words", [
    ({"type": "yaml"}, {}, "must be 'text', 'json_object' or 'json_schema'"),
    ({"type": "json_schema"}, {}, "needs a json_schema object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}, {}, "JSON Schema object"),
    (schema_format({"type": "object", "properties": {"a": {"type": "strnig"}}}), {}, "strnig"),
    (schema_format(), {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
     "enable_thinking"),
])
def test_bad_formats_are_400(client, fmt, extra, words):
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8,
                                       response_format=fmt, **extra)
    err = e.value.body
    assert err["param"] == "response_format" and words in err["message"], err


TOOLS = [
    {"type": "function", "function": {"name": "set_mood", "description": "Record a mood.",
     "parameters": {"type": "object", "properties": {
         "mood": {"enum": ["calm", "stormy"]}, "level": {"type": "integer", "minimum": 1,
                                                          "maximum": 5}},
         "required": ["mood", "level"]}}},
    {"type": "function", "function": {"name": "ring_bell", "description": "Ring the bell.",
     "parameters": {"type": "object", "properties": {"times": {"enum": [1, 2, 3]}},
                    "required": ["times"]}}},
]


def check_call(name: str, args: dict):
    if name == "set_mood":
        assert args["mood"] in ("calm", "stormy") and 1 <= args["level"] <= 5
    else:
        assert name == "ring_bell" and args["times"] in (1, 2, 3)


def test_tool_choice_required_and_named_force_calls(client):
    for seed in range(4):
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120,
                                           temperature=1.0, seed=seed, tools=TOOLS,
                                           tool_choice="required")
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and msg.tool_calls, r
        for c in msg.tool_calls:
            check_call(c.function.name, json.loads(c.function.arguments))
    kw = dict(model=MODEL, messages=ASK, max_tokens=120, temperature=0, tools=TOOLS,
              tool_choice={"type": "function", "function": {"name": "ring_bell"}})
    r = client.chat.completions.create(**kw)
    calls = r.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "ring_bell"
    check_call("ring_bell", json.loads(calls[0].function.arguments))
    # Streamed: the same call.
    streamed = [tc for ch in client.chat.completions.create(**kw, stream=True) if ch.choices
                for tc in (ch.choices[0].delta.tool_calls or [])]
    assert streamed and streamed[0].function.name == "ring_bell"
    assert json.loads(streamed[0].function.arguments) == json.loads(calls[0].function.arguments)


def test_anthropic_tool_choice_any_and_tool(server):
    a = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=60)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    r = a.messages.create(model=MODEL, max_tokens=120, tools=tools, tool_choice={"type": "any"},
                          messages=ASK, extra_body={"temperature": 0.8})
    uses = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and uses
    for u in uses:
        check_call(u.name, u.input)
    r = a.messages.create(model=MODEL, max_tokens=120, tools=tools, messages=ASK,
                          tool_choice={"type": "tool", "name": "set_mood"})
    uses = [b for b in r.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["set_mood"]
    check_call("set_mood", uses[0].input)
    with pytest.raises(anthropic.BadRequestError, match="Thinking may not be enabled"):
        a.messages.create(model=MODEL, max_tokens=2048, tools=tools, messages=ASK,
                          tool_choice={"type": "any"},
                          thinking={"type": "enabled", "budget_tokens": 1024})


def test_real_model_answers_in_schema(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("smol") / "server.log", "-m", smol_path(),
               "--alias", "smol", "-c", "2048")
    try:
        c = s.client()
        r = c.chat.completions.create(model="smol", messages=ASK, max_tokens=80, temperature=0,
                                      response_format=schema_format())
        check_verdict(r.choices[0].message.content)
        r = c.chat.completions.create(
            model="smol", max_tokens=60, temperature=0, response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "Reply in JSON: the capital of France."}])
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    finally:
        s.stop()
