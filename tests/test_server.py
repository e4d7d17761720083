"""giellm.Server.v1 against llama-cpp-python's own OpenAI-compatible server
(started on 127.0.0.1 only, on the tiny GGUF), and against a fake server."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from spacy_giellm.backends.server import ServerBackend, ServerError, make_server_backend, wait_until_ready
from spacy_giellm.format import build_input
from spacy_giellm.tasks import get_task

pytestmark = pytest.mark.slow

TEXTS = [
    "松友美佐紀は、日本のバドミントン選手。",
    "東京は日本の首都であり、人口が最も多い都市である。",
    "富士山は静岡県と山梨県にまたがる活火山である。",
    "夏目漱石は明治時代の小説家である。",
    "トヨタ自動車は愛知県豊田市に本社を置く自動車メーカーである。",
    "京都には多くの寺院や神社がある。",
    "北海道は日本の最北端に位置する。",
    "彼は毎朝七時に起きて、駅まで歩く。",
]
MAX_NEW = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(gguf, port: int) -> subprocess.Popen:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    return subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def llama_server(gguf):
    port = _free_port()
    proc = _start_server(gguf, port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, timeout=90)
        yield url, proc, port
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def server(tiny_gguf):
    with llama_server(tiny_gguf) as running:
        yield running


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.blank("ja")


def test_same_greedy_outputs_as_in_process_gguf(server, tiny_gguf, nlp):
    """Same greedy tokens as the in-process backend. Text is compared after
    decoding those tokens the server's way: llama-cpp-python drops bytes that
    are not valid UTF-8, where the backend (like transformers) writes U+FFFD."""
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend
    from spacy_giellm.component import GiellmComponent

    url, _, _ = server
    prompts = [build_input(t, get_task("scnm")) for t in TEXTS]
    local = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=512, max_new_tokens=MAX_NEW)
    try:
        expected = [local.llama.detokenize(ids).decode("utf-8", errors="ignore") for ids in local.generate_ids(prompts)]
    finally:
        local.close()
    remote = make_server_backend(url=url, max_new_tokens=MAX_NEW, concurrency=3)
    assert remote.generate(prompts) == expected
    # through the component: every doc gets its own prompt's output
    comp = GiellmComponent(nlp.vocab, task="scnm", backend=remote, batch_size=3, store_output=True)
    docs = list(comp.pipe(nlp.make_doc(t) for t in TEXTS))
    assert [d.text for d in docs] == TEXTS
    assert [d._.giellm_output["outputs"] for d in docs] == [[e] for e in expected]


def test_grammar_passthrough_gives_well_formed_outputs(server):
    from spacy_giellm.constraints import FormatAutomaton
    from spacy_giellm.format import parse_output

    url, _, _ = server
    task = get_task("scnm")
    backend = make_server_backend(url=url, max_new_tokens=24, constrained=True, task="scnm", concurrency=2)
    outs = backend.generate([build_input(t, task) for t in TEXTS[:4]])
    for text, out in zip(TEXTS[:4], outs, strict=True):  # one output per prompt, none missing
        auto = FormatAutomaton(task, text)
        state = auto.feed(auto.start, out.encode())
        assert state >= 0, out  # accepted, or a live prefix cut by max_tokens
        if auto.accepting(state):
            assert parse_output(out, task, text=text).ok


def test_server_killed_between_batches_raises_naming_the_url(tiny_gguf, nlp):
    from spacy_giellm.component import GiellmComponent

    with llama_server(tiny_gguf) as (url, proc, _):
        inner = make_server_backend(url=url, max_new_tokens=4, retries=2, backoff=0.05, timeout=10)

        class KillAfterFirstBatch:
            calls = 0

            def generate(self, prompts):
                out = inner.generate(prompts)
                KillAfterFirstBatch.calls += 1
                if KillAfterFirstBatch.calls == 1:
                    _stop(proc)
                return out

        comp = GiellmComponent(nlp.vocab, task="scnm", backend=KillAfterFirstBatch(), batch_size=2,
                               store_output=True)
        docs = [nlp.make_doc(t) for t in TEXTS[:6]]
        done = []
        start = time.monotonic()
        with pytest.raises(ServerError) as err:
            for doc in comp.pipe(iter(docs)):
                done.append(doc)
        assert time.monotonic() - start < 60
        assert url in str(err.value)
        # the docs handed out before the failure are complete and in order
        assert [d.text for d in done] == TEXTS[: len(done)]
        assert len(done) == 2
        assert all(d._.giellm_output and len(d._.giellm_output["outputs"]) == 1 for d in done)


def test_server_restarting_within_the_retry_window_loses_nothing(tiny_gguf):
    with llama_server(tiny_gguf) as (url, proc, port):
        backend = make_server_backend(url=url, max_new_tokens=4, retries=8, backoff=0.25, timeout=20, concurrency=2)
        prompts = [build_input(t, get_task("scnm")) for t in TEXTS[:4]]
        before = backend.generate(prompts)
        _stop(proc)
        restarted = {}

        def restart():
            time.sleep(0.5)
            restarted["proc"] = _start_server(tiny_gguf, port)

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            after = backend.generate(prompts)
        finally:
            thread.join(timeout=30)
            if "proc" in restarted:
                _stop(restarted["proc"])
        assert after == before


# ------------------------------------------------------------- fake server


class _Fake(http.server.BaseHTTPRequestHandler):
    script: list = []  # status codes to answer with, then 200s
    bodies: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Fake.bodies.append(body)
        status = _Fake.script.pop(0) if _Fake.script else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if status == 200:
            self.wfile.write(json.dumps({"choices": [{"text": "out:" + body["prompt"], "index": 0}]}).encode())
        else:
            self.wfile.write(b'{"error": "nope"}')


@pytest.fixture()
def fake():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Fake.script, _Fake.bodies = [], []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_request_body_and_order(fake):
    backend = make_server_backend(url=fake + "/v1", model="m", max_new_tokens=7, stop=["\n"], concurrency=4)
    prompts = [f"p{i}" for i in range(20)]
    assert backend.generate(prompts) == [f"out:p{i}" for i in range(20)]
    body = _Fake.bodies[0]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 7 and body["stop"] == ["\n"]
    assert body["model"] == "m" and body["repeat_penalty"] == 1.0 and "grammar" not in body


def test_grammar_fields(fake):
    task = get_task("scnm")
    prompt = build_input("東京", task)
    make_server_backend(url=fake, constrained=True, task="scnm").generate([prompt])
    assert _Fake.bodies[-1]["grammar"].startswith("root ::= ")
    vllm = make_server_backend(url=fake, constrained=True, server_kind="vllm")
    vllm.bind_task(task)
    vllm.generate([prompt])
    assert "guided_grammar" in _Fake.bodies[-1] and "grammar" not in _Fake.bodies[-1]
    with pytest.raises(ValueError, match="needs a task"):
        make_server_backend(url=fake, constrained=True).generate([prompt])


def test_retries_5xx_and_fails_fast_on_4xx(fake):
    backend = make_server_backend(url=fake, retries=3, backoff=0.01, concurrency=1)
    _Fake.script = [503, 500]
    assert backend.generate(["a"]) == ["out:a"]
    _Fake.script = [400]
    with pytest.raises(ServerError, match="refused"):
        backend.generate(["b"])
    _Fake.script = [503] * 10
    with pytest.raises(ServerError, match="after 4 tries"):
        backend.generate(["c"])


def test_down_server_error_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    backend = make_server_backend(url=url, retries=1, backoff=0.01, timeout=2)
    start = time.monotonic()
    with pytest.raises(ServerError) as err:
        backend.generate(["x", "y"])
    assert url in str(err.value) and time.monotonic() - start < 20
    with pytest.raises(ServerError, match="not ready"):
        wait_until_ready(url, timeout=0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="http"):
        ServerBackend(url="localhost:8080")
    with pytest.raises(ValueError, match="server_kind"):
        ServerBackend(url="http://x", server_kind="tgi")
    assert ServerBackend(url="http://h:1/v1/completions/").endpoint == "http://h:1/v1/completions"
