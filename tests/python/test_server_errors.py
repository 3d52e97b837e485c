"""Bad input on both APIs, table-driven: every request gets the API's own error object and
status, never a panic or a dropped connection, and the server keeps serving. One keyed
server (`--api-key`) on the demo model with a small context."""
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from test_server import Server, module_server

MODEL, KEY = "demo", "k-123"
OA, AN = "/v1/chat/completions", "/v1/messages"
MSG = [{"role": "user", "content": "Hi"}]


def j(v) -> bytes:
    return json.dumps(v).encode()


def chat(**kw) -> bytes:
    return j({"model": MODEL, "messages": MSG, "max_tokens": 4, **kw})


def msgs(**kw) -> bytes:
    return j({"model": MODEL, "messages": MSG, "max_tokens": 4, **kw})


# (name, path, body, extra headers, status, shape, error type or code to find)
CASES = [
    # --- OpenAI chat
    ("oa-not-json", OA, b"{nope", {}, 400, "openai", "invalid_request_error"),
    ("oa-array-body", OA, b"[1,2]", {}, 400, "openai", "invalid_request_error"),
    ("oa-empty-body", OA, b"", {}, 400, "openai", "invalid_request_error"),
    ("oa-bad-utf8", OA, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', {}, 400, "openai",
     "invalid_request_error"),
    ("oa-messages-not-list", OA, j({"messages": 3}), {}, 400, "openai", "invalid_request_error"),
    ("oa-no-messages", OA, j({"model": MODEL}), {}, 400, "openai", "invalid_request_error"),
    ("oa-empty-messages", OA, j({"messages": []}), {}, 400, "openai", "invalid_request_error"),
    ("oa-bad-role", OA, j({"messages": [{"role": "wizard", "content": "x"}]}), {}, 400, "openai",
     "invalid_request_error"),
    ("oa-no-content", OA, j({"messages": [{"role": "user"}]}), {}, 400, "openai", "invalid_request_error"),
    ("oa-content-number", OA, j({"messages": [{"role": "user", "content": 5}]}), {}, 400, "openai",
     "invalid_request_error"),
    ("oa-temperature-string", OA, chat(temperature="hot"), {}, 400, "openai", "invalid_request_error"),
    ("oa-temperature-negative", OA, chat(temperature=-1), {}, 400, "openai", "invalid_request_error"),
    ("oa-top-p-zero", OA, chat(top_p=0), {}, 400, "openai", "invalid_request_error"),
    ("oa-max-tokens-zero", OA, chat(max_tokens=0), {}, 400, "openai", "invalid_request_error"),
    ("oa-max-tokens-string", OA, chat(max_tokens="many"), {}, 400, "openai", "invalid_request_error"),
    ("oa-context-overflow", OA, chat(max_tokens=100000), {}, 400, "openai", "context_length_exceeded"),
    ("oa-stop-number", OA, chat(stop=3), {}, 400, "openai", "invalid_request_error"),
    ("oa-seed-float", OA, chat(seed=1.5), {}, 400, "openai", "invalid_request_error"),
    ("oa-logit-bias-bad-id", OA, chat(logit_bias={"99999999": 1}), {}, 400, "openai",
     "invalid_request_error"),
    ("oa-n-zero", OA, chat(n=0), {}, 400, "openai", "invalid_request_error"),
    ("oa-n-too-many", OA, chat(n=17), {}, 400, "openai", "invalid_request_error"),
    ("oa-top-logprobs-alone", OA, chat(top_logprobs=2), {}, 400, "openai", "invalid_request_error"),
    ("oa-stream-string", OA, chat(stream="yes"), {}, 400, "openai", "invalid_request_error"),
    ("oa-response-format-type", OA, chat(response_format={"type": "xml"}), {}, 400, "openai",
     "invalid_request_error"),
    ("oa-response-format-bad-schema", OA,
     chat(response_format={"type": "json_schema",
                           "json_schema": {"name": "x", "schema": {"type": "strnig"}}}),
     {}, 400, "openai", "invalid_request_error"),
    ("oa-tool-choice-required-no-tools", OA, chat(tool_choice="required"), {}, 400, "openai",
     "invalid_request_error"),
    ("oa-unknown-model", OA, chat(model="gpt-9"), {}, 404, "openai", "model_not_found"),
    ("oa-model-number", OA, chat(model=7), {}, 400, "openai", "invalid_request_error"),
    ("oa-no-key", OA, chat(), {"Authorization": ""}, 401, "openai", "invalid_api_key"),
    ("oa-wrong-key", OA, chat(), {"Authorization": "Bearer nope"}, 401, "openai", "invalid_api_key"),
    ("oa-too-large", OA, b" " * (16 * 1024 * 1024 + 1), {}, 413, "openai", "request_too_large"),
    ("completions-no-prompt", "/v1/completions", j({"max_tokens": 3}), {}, 400, "openai",
     "invalid_request_error"),
    ("completions-prompt-object", "/v1/completions", j({"prompt": {"a": 1}}), {}, 400, "openai",
     "invalid_request_error"),
    ("completions-logprobs-9", "/v1/completions", j({"prompt": "x", "logprobs": 9}), {}, 400,
     "openai", "invalid_request_error"),
    ("unknown-route", "/v1/nothing", j({}), {}, 404, "openai", "invalid_request_error"),
    # --- Anthropic messages
    ("an-not-json", AN, b"{nope", {}, 400, "anthropic", "invalid_request_error"),
    ("an-bad-utf8", AN, b'{"model": "demo", "max_tokens": 3, "messages": "\xff"}', {}, 400,
     "anthropic", "invalid_request_error"),
    ("an-no-max-tokens", AN, j({"model": MODEL, "messages": MSG}), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-no-model", AN, j({"max_tokens": 3, "messages": MSG}), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-unknown-model", AN, msgs(model="claude-9"), {}, 404, "anthropic", "not_found_error"),
    ("an-empty-messages", AN, msgs(messages=[]), {}, 400, "anthropic", "invalid_request_error"),
    ("an-system-role", AN, msgs(messages=[{"role": "system", "content": "x"}]), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-content-number", AN, msgs(messages=[{"role": "user", "content": 1}]), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-image", AN, msgs(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
     {}, 400, "anthropic", "invalid_request_error"),
    ("an-tool-use-in-user", AN, msgs(messages=[{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-temperature-2", AN, msgs(temperature=2), {}, 400, "anthropic", "invalid_request_error"),
    ("an-thinking-small-budget", AN, msgs(thinking={"type": "enabled", "budget_tokens": 5}), {},
     400, "anthropic", "invalid_request_error"),
    ("an-tool-choice-any-no-tools", AN, msgs(tool_choice={"type": "any"}), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-tool-no-name", AN, msgs(tools=[{"input_schema": {}}]), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-overflow", AN, msgs(max_tokens=100000), {}, 400, "anthropic", "invalid_request_error"),
    ("an-stop-sequences-number", AN, msgs(stop_sequences=3), {}, 400, "anthropic",
     "invalid_request_error"),
    ("an-wrong-key", AN, msgs(), {"x-api-key": "nope", "Authorization": ""}, 401, "anthropic",
     "authentication_error"),
    ("an-too-large", AN, b" " * (16 * 1024 * 1024 + 1), {}, 413, "anthropic", "request_too_large"),
    ("an-count-no-messages", AN + "/count_tokens", j({"model": MODEL}), {}, 400, "anthropic",
     "invalid_request_error"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "-c", "512", "--api-key", KEY)


def send(server, path, body, headers):
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **headers}
    h = {k: v for k, v in h.items() if v}
    if len(body) > 16 * 1024 * 1024:
        return send_declared_only(server, path, len(body), h)
    req = urllib.request.Request(server.url + path, data=body, method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def send_declared_only(server, path, length, headers):
    """Headers declaring a body over the limit, no body: the server refuses by the declared
    length before reading (a client that sent `Expect: 100-continue` uploads nothing)."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {server.host}", f"Content-Length: {length}",
             "Expect: 100-continue", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((server.host, int(server.port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def test_more_than_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,path,body,headers,status,shape,kind", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, name, path, body, headers, status, shape, kind):
    got, err = send(server, path, body, headers)
    assert got == status, (name, err)
    if shape == "openai":
        e = err["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["message"], err
        assert kind in (e["type"], e["code"]), err
    else:
        assert err["type"] == "error" and set(err["error"]) == {"type", "message"}, err
        assert err["error"]["type"] == kind and err["error"]["message"], err


def test_still_serving_after_all_that(server):
    status, r = send(server, OA, chat(), {})
    assert status == 200 and r["choices"][0]["message"] is not None
    status, r = send(server, AN, msgs(), {"x-api-key": KEY})
    assert status == 200 and r["content"]


def test_full_line_refuses_with_retry_after(tmp_path):
    """`-np 2 --max-queue 1`: two requests run, one waits, the next is refused — 429 with
    `Retry-After` on OpenAI's routes, 529 `overloaded_error` on Anthropic's."""
    s = Server(tmp_path / "server.log", "--alias", MODEL, "-c", "8192", "-np", "2",
               "--max-queue", "1")
    long = j({"model": MODEL, "prompt": "Once", "max_tokens": 4000, "stream": True,
              "ignore_eos": True, "temperature": 0})
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {s.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(long)}\r\n\r\n").encode()
    socks = []
    try:
        for i in range(3):  # two run (their headers are in before the third goes)
            sock = socket.create_connection((s.host, int(s.port)), timeout=30)
            sock.sendall(head + long)
            socks.append(sock)
            if i < 2:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 30
        while True:  # until the second is counted as waiting
            with urllib.request.urlopen(s.url + "/metrics", timeout=10) as res:
                if "llm_server_requests_waiting 1\n" in res.read().decode():
                    break
            assert time.monotonic() < deadline, "the second request never waited"
            time.sleep(0.02)
        for path, body, status in [(OA, chat(), 429), (AN, msgs(), 529)]:
            req = urllib.request.Request(s.url + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
            assert e.value.code == status and e.value.headers["Retry-After"] == "1"
            err = json.loads(e.value.read())["error"]
            assert (err.get("code") or err.get("type")) in ("rate_limit_exceeded", "overloaded_error")
    finally:
        for sock in socks:
            sock.close()
        s.stop()
