"""Structured output (issue 12 req. 3) with the official `openai` client over real HTTP:
`response_format` `json_object` and `json_schema` (strict) enforced by constrained decoding
(llguidance), whole and streamed, on the demo model (whose weights would never write JSON by
themselves) and on SmolLM2; bad formats and schemas are 400s in OpenAI's shape."""
import json

import pytest
from openai import BadRequestError

from helpers import real_models
from test_server import Server, module_server

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


def test_real_model_answers_in_schema(tmp_path_factory):
    smol = [m for m in real_models() if m.name.startswith("SmolLM2")]
    if not smol:
        pytest.fail("SmolLM2 missing: run scripts/fetch-models.py")
    s = Server(tmp_path_factory.mktemp("smol") / "server.log", "-m", str(smol[0]),
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
