"""Parallel slots and continuous batching (issue 12 req. 5), over real HTTP with the official
`openai` client on the demo model: concurrent greedy requests get the answers they get alone,
their tokens go through the model in shared steps (the batcher's counters in `/metrics`), and a
long prompt joins the running batch a `-ub` chunk at a time while the streams keep flowing."""
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_server import Server

MODEL = "demo"
TOPICS = ["the whale", "a lighthouse", "the harbour at night", "an old ship's captain",
          "the storm", "a sailor's song"]


def ask(client, topic: str, max_tokens: int = 24) -> str:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Tell me about {topic}."}],
        max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def metrics(server) -> dict:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as res:
        lines = res.read().decode().splitlines()
    return {k: float(v) for k, v in (l.rsplit(" ", 1) for l in lines if l and l[0] != "#")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("slots") / "server.log", "--alias", MODEL, "-c", "2048",
               "-np", "4", "-ub", "64")
    yield s
    s.stop()


def test_concurrent_requests_get_their_own_answers_in_shared_steps(server):
    client = server.client()
    alone = [ask(client, t) for t in TOPICS]
    before = metrics(server)
    with ThreadPoolExecutor(len(TOPICS)) as pool:
        together = list(pool.map(lambda t: ask(client, t), TOPICS))
    assert together == alone
    after = metrics(server)
    steps = after["llm_server_batch_steps_total"] - before["llm_server_batch_steps_total"]
    rows = after["llm_server_batch_rows_total"] - before["llm_server_batch_rows_total"]
    assert after["llm_server_slots"] == 4
    # Six requests on four slots, 24 tokens each: most steps carry several sequences.
    assert rows > 1.5 * steps, (rows, steps)
    assert after["llm_server_requests_running"] == 0


def test_a_long_prompt_joins_while_streams_flow(server):
    client = server.client()
    long_text = " ".join(["The sea was calm and the ship sailed on through the night."] * 60)
    got = {i: [] for i in range(3)}
    joined = threading.Event()
    during = [0]

    def stream(i):
        s = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Tell me about {TOPICS[i]}."}],
            max_tokens=160, temperature=0, stream=True, extra_body={"ignore_eos": True})
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                got[i].append(chunk.choices[0].delta.content)
                if i == 0 and joined.is_set():
                    during[0] += 1

    def late():
        while len(got[0]) < 4:
            time.sleep(0.01)
        joined.set()
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=1,
            temperature=0)
        joined.clear()
        return r.usage.prompt_tokens

    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, i) for i in range(3)]
        prompt_tokens = pool.submit(late).result()
        for f in streams:
            f.result()
    # The prompt went in chunks of 64 tokens; the first stream kept receiving text while it
    # did (its tokens shared the chunks' steps instead of waiting for the whole prompt).
    assert prompt_tokens > 8 * 64, prompt_tokens
    assert during[0] >= 1
    # The streams' text is what each gets alone.
    for i in range(3):
        alone = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Tell me about {TOPICS[i]}."}],
            max_tokens=160, temperature=0, extra_body={"ignore_eos": True})
        assert "".join(got[i]) == alone.choices[0].message.content, i
