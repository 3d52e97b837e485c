"""`llm-server serve` over real HTTP on loopback, driven by the official `openai` client, raw
HTTP (urllib, sockets) and curl, on the shipped demo model. Replies are short (max_tokens <= 32)
so the module runs in seconds."""
import base64
import json
import math
import re
import select
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from helpers import binary, real_models

MODEL = "demo"
HELLO = [{"role": "user", "content": "Tell me about the whale."}]


class Server:
    """A `llm-server serve --port 0` process; its stderr (one line per request) goes to `log`."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [str(binary()), "serve", "--port", "0", "-t", "1", *args],
                stdout=subprocess.PIPE, stderr=err, text=True)
        self.url = self._wait_for_address()
        self.host, self.port = re.match(r"http://([\d.]+):(\d+)$", self.url).groups()

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("listening on "):
                    return line.split()[-1]
            if self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail(f"server did not start:\n{self.log.read_text()}")

    def client(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def smol_path() -> str:
    """SmolLM2-135M-Instruct, fetched by scripts/fetch-models.py (a failure without it)."""
    smol = [m for m in real_models() if m.name.startswith("SmolLM2")]
    if not smol:
        pytest.fail("SmolLM2 missing: run scripts/fetch-models.py")
    return str(smol[0])


def module_server(tmp_path_factory, *args: str):
    """A module's server on the demo model (alias `demo`), stopped at the end."""
    s = Server(tmp_path_factory.mktemp("serve") / "server.log", "--alias", MODEL, *args)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A context big enough that an unstopped generation would run for many seconds.
    yield from module_server(tmp_path_factory, "-c", "8192")


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return server.client()


def raw(server, method: str, path: str, body: bytes | None = None, headers=None):
    """(status, parsed JSON body) of a request made with urllib."""
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def assert_error_shape(body, status_type="invalid_request_error"):
    assert list(body) == ["error"], body
    err = body["error"]
    assert list(err) == ["message", "type", "param", "code"], err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == status_type
    return err


def test_health_and_models(server, client):
    assert raw(server, "GET", "/health") == (200, {"status": "ok"})
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "llm-server"
    assert isinstance(models.data[0].created, int)


def test_chat_reply_and_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # Without ignore_eos the model may end first; the counts must say which.
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=32, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert (r.choices[0].finish_reason == "length") == (r.usage.completion_tokens == 32)


def test_streamed_chat_equals_whole(client):
    args = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    # include_usage: a last chunk with no choices and the counts; null usage before it.
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_reasoning_apart_from_the_answer(client, tmp_path):
    """The demo template opens `<think>` when thinking is on: the text before `</think>` is
    reasoning (`reasoning_content`, whole and streamed), never content; `--reasoning-format
    none` leaves the model's text as it is."""
    args = dict(model=MODEL, messages=HELLO, max_tokens=24, temperature=0,
                extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    whole = client.chat.completions.create(**args).choices[0].message
    assert "</think>" not in whole.content
    reasoning = getattr(whole, "reasoning_content", None)
    chunks = list(client.chat.completions.create(**args, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == whole.content
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert streamed == (reasoning or "")
    s = Server(tmp_path / "server.log", "--alias", MODEL, "--reasoning-format", "none")
    try:
        raw_text = s.client().chat.completions.create(**args).choices[0].message.content
    finally:
        s.stop()
    # Same greedy tokens: the raw text is the reasoning, the tag, the answer.
    assert "</think>" in raw_text
    before, after = raw_text.split("</think>", 1)
    assert before.strip() == (reasoning or "") and after.strip() == whole.content.strip()


def metrics(server) -> dict:
    """`GET /metrics` as {sample name with labels: value}."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as res:
        assert res.headers["Content-Type"].startswith("text/plain")
        text = res.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_and_first_tokens(server, client):
    before = metrics(server)
    route = 'llm_server_requests_total{route="/v1/chat/completions",status="200"}'
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=5)
    after = metrics(server)
    assert after[route] == before.get(route, 0) + 1
    bad = 'llm_server_requests_total{route="/v1/chat/completions",status="400"}'
    assert after[bad] == before.get(bad, 0) + 1
    gen = "llm_server_generated_tokens_total"
    assert after[gen] == before[gen] + r.usage.completion_tokens
    prompt = "llm_server_prompt_tokens_total"
    assert after[prompt] == before[prompt] + r.usage.prompt_tokens
    count = "llm_server_time_to_first_token_seconds_count"
    assert after[count] == before[count] + 1
    assert after['llm_server_time_to_first_token_seconds_bucket{le="+Inf"}'] == after[count]
    # The generation thread lets go of its gauge just after its last event: wait for it.
    for _ in range(100):
        if after["llm_server_requests_running"] == 0:
            break
        time.sleep(0.02)
        after = metrics(server)
    assert after["llm_server_requests_waiting"] == 0 and after["llm_server_requests_running"] == 0
    assert after["llm_server_resident_memory_bytes"] > 0


def test_tool_history_renders_the_arguments(client):
    """An earlier call's `arguments` (JSON text, as OpenAI sends them) reach the template as an
    object: a longer argument value makes a longer prompt."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]

    def prompt_tokens(city: str) -> int:
        messages = [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ]
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                           max_tokens=1, temperature=0)
        return r.usage.prompt_tokens

    assert prompt_tokens("Paris, France, Europe, Earth") > prompt_tokens("Paris")
    # A forced call of a tool that is not offered is a 400 naming it
    # (test_structured_output.py forces real calls).
    with pytest.raises(openai.BadRequestError, match="no tool named"):
        client.chat.completions.create(model=MODEL, messages=HELLO, tools=tools, max_tokens=1,
                                       tool_choice={"type": "function",
                                                    "function": {"name": "get_time"}})


def test_models_and_props_report_the_context(server, client):
    # The ready line: what runs where and what it holds.
    assert re.search(r"ready: demo \(qwen35moe, [\d.]+ GiB\) on cpu \| context 8192, KV f16/f16",
                     server.log.read_text()), server.log.read_text()
    m = client.models.list().data[0]
    assert m.model_extra["max_model_len"] == 8192 and m.model_extra["meta"]["n_ctx"] == 8192
    assert m.model_extra["meta"]["n_vocab"] > 0
    with urllib.request.urlopen(server.url + "/props", timeout=10) as res:
        props = json.loads(res.read())
    assert props["n_ctx"] == 8192 and props["model_alias"] == MODEL
    assert "<|im_start|>" in props["chat_template"]


def test_chat_template_file(tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                   "{% endfor %}<|im_start|>assistant\n")
    s = Server(tmp_path / "server.log", "--alias", MODEL, "--chat-template-file", str(tpl))
    try:
        with urllib.request.urlopen(s.url + "/props", timeout=10) as res:
            assert json.loads(res.read())["chat_template"] == tpl.read_text()
        r = s.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert r.usage.prompt_tokens > 0
    finally:
        s.stop()
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    proc = subprocess.run([str(binary()), "serve", "--port", "0", "--chat-template-file", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "bad.jinja" in proc.stderr, proc.stderr
    missing = subprocess.run([str(binary()), "serve", "--port", "0", "--chat-template-file",
                              str(tmp_path / "nope.jinja")], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "nope.jinja" in missing.stderr, missing.stderr


def test_logprobs_chat_streamed_and_legacy(client):
    args = dict(model=MODEL, messages=HELLO, max_tokens=6, temperature=0, logprobs=True,
                top_logprobs=3, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**args)
    items = whole.choices[0].logprobs.content
    assert len(items) == whole.usage.completion_tokens == 6
    for it in items:
        tops = it.top_logprobs
        assert len(tops) == 3 and all(a.logprob >= b.logprob for a, b in zip(tops, tops[1:]))
        # Greedy: the chosen token is the most likely one.
        assert it.token == tops[0].token and abs(it.logprob - tops[0].logprob) < 1e-6
        assert it.logprob <= 0 and sum(math.exp(t.logprob) for t in tops) <= 1 + 1e-5
        assert bytes(it.bytes).decode("utf-8", "replace") == it.token
    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [it for c in chunks if c.choices and c.choices[0].logprobs
                for it in c.choices[0].logprobs.content]
    assert [(i.token, round(i.logprob, 5)) for i in streamed] == \
        [(i.token, round(i.logprob, 5)) for i in items]
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                  temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 5
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_several_choices(client):
    """`n` choices, whole and streamed: greedy ones are equal; seeded sampled ones differ
    from each other (seed, seed + 1, …) and are reproducible; usage counts them all."""
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=3,
                                            temperature=0, extra_body={"ignore_eos": True})
    texts = [c.message.content for c in greedy.choices]
    assert [c.index for c in greedy.choices] == [0, 1, 2] and len(set(texts)) == 1
    assert greedy.usage.completion_tokens == 18
    args = dict(model=MODEL, messages=HELLO, max_tokens=12, n=3, temperature=1.5, seed=7,
                extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1
    chunks = list(client.chat.completions.create(**args, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = ["", "", ""]
    finishes = {}
    for c in chunks:
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert streamed == [c.message.content for c in a.choices]
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].usage.completion_tokens == 36
    legacy = client.completions.create(model=MODEL, prompt="Once", max_tokens=3, n=2,
                                       temperature=0)
    assert [c.index for c in legacy.choices] == [0, 1]


def test_embeddings(client):
    one = client.embeddings.create(model=MODEL, input="The whale swam.")
    v = one.data[0].embedding
    assert len(v) > 0 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens
    many = client.embeddings.create(model=MODEL, input=["The whale swam.", "Tea is hot.",
                                                        "The whale swam."])
    vs = [d.embedding for d in many.data]
    assert [d.index for d in many.data] == [0, 1, 2]
    assert max(abs(a - b) for a, b in zip(vs[0], v)) < 1e-5
    assert vs[0] == vs[2] and vs[0] != vs[1]
    # The client asks for base64 by default and decodes it; asked for explicitly it hands the
    # text over: little-endian f32, the same values as `float`.
    b64 = client.embeddings.create(model=MODEL, input="The whale swam.", encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    fl = client.embeddings.create(model=MODEL, input="The whale swam.", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats, fl.data[0].embedding)) < 1e-6
    ids = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="other", input="x")
    # `dimensions`: the first N values, normalised again.
    short = client.embeddings.create(model=MODEL, input="The whale swam.", dimensions=8)
    w = short.data[0].embedding
    assert len(w) == 8 and abs(math.sqrt(sum(x * x for x in w)) - 1) < 1e-4
    scale = math.sqrt(sum(x * x for x in v[:8]))
    assert max(abs(a - b / scale) for a, b in zip(w, v[:8])) < 1e-4
    for bad in (0, len(v) + 1):
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(model=MODEL, input="x", dimensions=bad)


def test_echo(client):
    prompt = "Once upon a time"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                  echo=True, extra_body={"ignore_eos": True})
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert r.choices[0].text == prompt + plain.choices[0].text
    lp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0,
                                   echo=True, logprobs=1, extra_body={"ignore_eos": True})
    c = lp.choices[0]
    assert c.text == r.choices[0].text and "".join(c.logprobs.tokens) == c.text
    n_prompt = lp.usage.prompt_tokens
    assert len(c.logprobs.tokens) == n_prompt + 4
    assert c.logprobs.token_logprobs[0] is None
    assert all(x <= 0 for x in c.logprobs.token_logprobs[1:])
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=4,
                                              temperature=0, echo=True, logprobs=1, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in streamed) == c.text
    toks = [t for ch in streamed if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert toks == c.logprobs.tokens


def test_request_logs_are_logfmt_with_ids(server, client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    for _ in range(100):  # the generation's line is written just after its reply
        log = server.log.read_text()
        if r.id in log:
            break
        time.sleep(0.02)
    line = next(l for l in log.splitlines() if l.startswith(f"generation id={r.id} "))
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    assert fields["prompt_tokens"] == str(r.usage.prompt_tokens)
    assert fields["generated_tokens"] == "3" and fields["finish"] == "length"
    assert float(fields["decode_tok_s"]) > 0
    assert re.search(r'^http method=POST path="/v1/chat/completions" status=200 ms=[\d.]+$', log,
                     re.M)


def test_stop_strings(client):
    args = dict(model=MODEL, messages=HELLO, max_tokens=32, temperature=0,
                extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**args).choices[0].message.content
    assert len(full) > 20, full
    stop = full[12:16]
    for given in (stop, [stop, "never in the text"]):
        r = client.chat.completions.create(**args, stop=given)
        assert r.choices[0].message.content == full[:full.index(stop)]
        assert r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(**args, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[:full.index(stop)]


def test_seed_reproduces_sampling(client):
    def sample(seed):
        r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24,
                                           temperature=0.8, seed=seed)
        return r.choices[0].message.content
    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in range(1, 5)}) > 1


def test_text_completions(client):
    args = dict(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0)
    r = client.completions.create(**args)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(client.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(n=17), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (dict(extra_body={"temperature": "hot"}), "temperature"),
])
def test_bad_requests_raise_bad_request(client, kwargs, param):
    args = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400
    assert e.value.param == param
    assert set(e.value.body) == {"message", "type", "param", "code"}


def test_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10_000)
    assert e.value.code == "context_length_exceeded"
    assert "maximum context length is 8192 tokens" in e.value.body["message"]
    long = [{"role": "user", "content": "whale " * 9000}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_raw_http_errors(server):
    status, body = raw(server, "POST", "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and "parse the JSON body" in assert_error_shape(body)["message"]
    status, body = raw(server, "POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": "hi"}).encode())
    assert status == 400 and assert_error_shape(body)["param"] == "messages"
    status, body = raw(server, "POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "x", "max_tokens": "many"}).encode())
    assert status == 400 and assert_error_shape(body)["param"] == "max_tokens"
    status, body = raw(server, "GET", "/v1/nothing/here")
    assert status == 404
    assert assert_error_shape(body)["message"] == "Invalid URL (GET /v1/nothing/here)"
    status, body = raw(server, "GET", "/v1/chat/completions")
    assert status == 405
    assert_error_shape(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_errors(server, tmp_path):
    def curl(*args):
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        body, status = out.rsplit("\n", 1)
        return int(status), json.loads(body)
    status, body = curl(f"{server.url}/v1/chat/completions", "-d", "{oops}")
    assert status == 400
    assert_error_shape(body)
    # Over the 16 MiB limit: refused from Content-Length, before the upload.
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (17 << 20))
    status, body = curl(f"{server.url}/v1/chat/completions", "-H", "Expect: 100-continue",
                        "-H", "Content-Type: application/json", "--data-binary", f"@{big}")
    assert status == 413
    assert assert_error_shape(body)["code"] == "request_too_large"


def test_api_key(tmp_path):
    s = Server(tmp_path / "server.log", "--api-key", "sesame", "--alias", MODEL)
    try:
        with pytest.raises(openai.AuthenticationError) as e:
            s.client("wrong").models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        status, body = raw(s, "POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode())
        assert status == 401
        assert_error_shape(body)
        assert raw(s, "GET", "/health") == (200, {"status": "ok"})
        r = s.client("sesame").chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        assert r.usage.completion_tokens <= 2
    finally:
        s.stop()


def long_stream(server, max_tokens: int = 8000):
    """A raw socket streaming a long text completion, three events in: (socket, bytes so far)."""
    body = json.dumps({"model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens,
                       "stream": True, "ignore_eos": True, "temperature": 0}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection((server.host, int(server.port)), timeout=60)
    sock.sendall(head + body)
    received = b""
    while received.count(b"data: ") < 3:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    return sock, received


def test_disconnect_stops_generation(server, client):
    sock, _ = long_stream(server)
    sock.close()
    # Hanging up stops the 8000-token generation, so the next request is served at once
    # (8000 tokens take the demo model many seconds).
    t0 = time.monotonic()
    r = client.with_options(timeout=10).chat.completions.create(model=MODEL, messages=HELLO,
                                                                max_tokens=8)
    assert r.choices[0].message.content
    assert time.monotonic() - t0 < 5
    cancelled = re.findall(r"generated_tokens=(\d+) .*finish=cancelled", server.log.read_text())
    assert cancelled and int(cancelled[-1]) < 8000


def test_sigterm_stops_accepting_then_cancels_what_runs(tmp_path):
    s = Server(tmp_path / "server.log", "--alias", MODEL, "-c", "8192", "--shutdown-grace", "1")
    sock, received = long_stream(s)
    with sock:
        s.proc.send_signal(15)  # SIGTERM
        # The stream goes on within the grace period, then ends: the socket closes.
        while chunk := sock.recv(65536):
            received += chunk
    assert s.proc.wait(timeout=60) == 0
    log = s.log.read_text()
    assert "shutting down" in log and "deadline passed" in log and "stopped" in log, log
    generated = re.findall(r"generated_tokens=(\d+)", log)
    assert not generated or int(generated[-1]) < 8000
    with pytest.raises(OSError):
        socket.create_connection((s.host, int(s.port)), timeout=5).close()


def test_timeout_ends_a_long_generation(tmp_path):
    """`--timeout 1`: a request that would generate 8,000 tokens ends after a second of
    generation as at max_tokens (`length`), logged as a timeout; the server goes on."""
    s = Server(tmp_path / "server.log", "--alias", MODEL, "-c", "8192", "--timeout", "1")
    try:
        c = s.client()
        r = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8000,
                                      temperature=0, extra_body={"ignore_eos": True})
        assert r.choices[0].finish_reason == "length"
        assert 0 < r.usage.completion_tokens < 8000
        assert "finish=timeout" in s.log.read_text()
        r = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        s.stop()
