"""Load on loopback: 64 concurrent clients send 1,000 requests mixed across both APIs
(streamed and whole, chat, text completion, messages), each with a short reply. Every one must
complete with a well-formed reply or stream end; no slot may be left busy; resident memory
must stay flat after the warm-up (the curve is printed). The server runs four generations at
a time (`-np 4`, the default, batched), so this also checks that the slots and the waiting line
drain: nothing left running or waiting, every batch's sequences handed back."""
import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_server import module_server

MODEL = "demo"
CLIENTS, REQUESTS = 64, 1000
MSG = [{"role": "user", "content": "Tell me about the whale."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "-c", "512")


def request(server, i: int) -> str:
    """Request `i` of the mix; returns its kind when the reply is well formed."""
    kind = ["chat", "chat-stream", "completion", "messages", "messages-stream"][i % 5]
    path, body = {
        "chat": ("/v1/chat/completions", {"messages": MSG}),
        "chat-stream": ("/v1/chat/completions", {"messages": MSG, "stream": True}),
        "completion": ("/v1/completions", {"prompt": "Once upon a time"}),
        "messages": ("/v1/messages", {"model": MODEL, "messages": MSG}),
        "messages-stream": ("/v1/messages", {"model": MODEL, "messages": MSG, "stream": True}),
    }[kind]
    body = {**body, "max_tokens": 4, "temperature": 0}
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=300) as res:
        assert res.status == 200
        text = res.read().decode()
    if kind == "chat-stream":
        assert text.endswith("data: [DONE]\n\n"), text[-200:]
    elif kind == "messages-stream":
        assert text.rstrip().endswith('data: {"type":"message_stop"}'), text[-200:]
    elif kind == "messages":
        assert json.loads(text)["type"] == "message"
    else:
        assert json.loads(text)["choices"][0]["finish_reason"] in ("stop", "length")
    return kind


def metrics(server) -> dict:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as res:
        lines = res.read().decode().splitlines()
    return {k: float(v) for k, v in (l.rsplit(" ", 1) for l in lines if l and l[0] != "#")}


def test_many_clients_all_served_memory_flat(server):
    rss, done, lock = [], [0], threading.Lock()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            m = metrics(server)
            rss.append((done[0], m["llm_server_resident_memory_bytes"]))
            time.sleep(0.25)

    def one(i):
        kind = request(server, i)
        with lock:
            done[0] += 1
        return kind

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        kinds = list(pool.map(one, range(REQUESTS)))
    elapsed = time.monotonic() - t0
    stop.set()
    sampler.join()
    assert len(kinds) == REQUESTS
    m = metrics(server)
    for _ in range(100):  # the last generation lets go of its gauge just after its reply
        if m["llm_server_requests_running"] == 0:
            break
        time.sleep(0.02)
        m = metrics(server)
    assert m["llm_server_requests_waiting"] == 0 and m["llm_server_requests_running"] == 0
    ok = sum(v for k, v in m.items() if k.startswith("llm_server_requests_total") and 'status="200"' in k
             and "/metrics" not in k)
    assert ok >= REQUESTS
    # Resident memory after the warm-up (the first fifth) against the end.
    warm = [r for n, r in rss if n >= REQUESTS // 5]
    curve = ", ".join(f"{n}:{r / 2**20:.1f}" for n, r in rss[:: max(1, len(rss) // 12)])
    print(f"\n{REQUESTS} requests from {CLIENTS} clients in {elapsed:.1f} s; "
          f"RSS MiB by requests done: {curve}")
    assert warm, rss
    assert max(warm) - warm[0] < 16 * 2**20, curve
