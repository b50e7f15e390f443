"""The sampling playground: the continuous batch, its HTTP stream, and the page in a real browser."""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn

from flows.common import load_config
from flows.playground import build_app
from model.batching import BatchedGenerator, Request, decoding_plan
from model.gpt import GPT, GPTConfig
from model.sample import sample_text
from tasks.lm.playground import PlaygroundServer

REQUESTS = [  # different prompts, lengths and settings; the first runs past the 64-token context
    ("Hello there", dict(max_new_tokens=80, seed=1, temperature=0.9, top_k=40)),
    ("The cat", dict(max_new_tokens=30, seed=2, temperature=0, repetition_penalty=1.3)),
    ("Über alles", dict(max_new_tokens=50, seed=3, temperature=1.0, top_k=None, top_p=0.9)),
    ("A", dict(max_new_tokens=20, seed=4)),
    ("Six", dict(max_new_tokens=40, seed=5, temperature=1.2, top_p=0.5, top_k=5)),
]


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64, vocab_size=50257,
                         padded_vocab_size=50257)).eval()


def run(engine: BatchedGenerator, requests: list[tuple[str, dict]], stagger_s: float = 0.002) -> list[list[dict]]:
    """Submit the requests a little apart and collect each one's events until all are done."""
    events: list[list[dict]] = [[] for _ in requests]
    finished = threading.Semaphore(0)

    def collector(i: int):
        def on_event(event: dict) -> None:
            events[i].append(event)
            if event["type"] in ("done", "error"):
                finished.release()
        return on_event

    for i, (prompt, settings) in enumerate(requests):
        engine.submit(Request(prompt, on_event=collector(i), **settings))
        time.sleep(stagger_s)
    for _ in requests:
        assert finished.acquire(timeout=120)
    return events


@pytest.mark.parametrize("decoders, packed", [(1, True), (2, True), (1, False)])
def test_a_request_samples_the_same_text_alone_batched_and_from_the_cli(decoders, packed):
    model = tiny_gpt(0).pack_for_cpu() if packed else tiny_gpt(0)  # packed: as load_gpt gives it on a CPU
    engine = BatchedGenerator(model, rows=4, decoders=decoders, threads=1)  # five requests for four rows: one waits
    batched = run(engine, REQUESTS)
    for (prompt, settings), together in zip(REQUESTS, batched):
        [alone] = run(engine, [(prompt, settings)])
        assert together[-1]["type"] == alone[-1]["type"] == "done"
        assert together[-1]["text"] == alone[-1]["text"]
        assert "".join(e["text"] for e in together if e["type"] == "token") == together[-1]["text"]
        cli = sample_text(model, prompt, settings["max_new_tokens"], settings.get("temperature", 0.8),
                          settings.get("top_k", 40), settings["seed"], settings.get("top_p"),
                          settings.get("repetition_penalty", 1.0))
        assert cli == prompt + alone[-1]["text"]  # one sampler for the command line and the page
    assert [e[-1]["tokens"] for e in batched][0] == 80  # past the context, as the command line goes on
    token = next(e for e in batched[0] if e["type"] == "token")
    assert 0 < token["p"] <= 1 and len(token["alternatives"]) == 5
    engine.close()


def test_a_cpu_decoder_gets_the_cores_shared_among_the_checkpoints_served(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cpu = torch.device("cpu")
    assert decoding_plan(cpu) == (1, 8)
    assert decoding_plan(cpu, engines=2) == (1, 4)  # a checkpoint and its comparison
    assert decoding_plan(cpu, 2, engines=2) == (2, 2)
    assert decoding_plan(cpu, 16) == (16, 1)
    assert decoding_plan(torch.device("cuda")) == (1, None)  # a GPU's kernels queue on it anyway


def test_a_request_goes_to_the_decoder_with_the_fewest_requests():
    engine = BatchedGenerator(tiny_gpt(0), rows=4, decoders=2, threads=1)
    engine.close()  # their threads stopped: _admit is called here, one decoder at a time
    busy, idle = engine.decoders
    busy.active[0] = "a request"  # taken as in use
    engine.waiting.put(Request("Hello", max_new_tokens=3, on_event=lambda event: None))
    busy._admit(block=False)
    assert busy.in_use() == 1 and engine.waiting.qsize() == 1  # left for the idle one
    idle._admit(block=False)
    assert idle.in_use() == 1 and engine.waiting.empty()


def test_a_step_whose_requests_were_all_cancelled_frees_their_rows_and_decodes_nothing():
    engine = BatchedGenerator(tiny_gpt(0), rows=2, decoders=1, threads=1)
    engine.close()  # its thread stopped: the step is called here
    [decoder] = engine.decoders
    request = Request("Hello", max_new_tokens=50, on_event=lambda event: None)
    decoder._start(0, request)
    request.cancelled = True  # the page went away
    decoder._step()  # once raised on an empty batch of logits
    assert decoder.in_use() == 0


def test_closing_ends_the_requests_in_flight_and_the_threads():
    engine, events, started = BatchedGenerator(tiny_gpt(0), rows=2, decoders=2, threads=1), [], threading.Event()

    def on_event(event: dict) -> None:
        events.append(event)
        started.set()

    engine.submit(Request("Hello", max_new_tokens=100_000, on_event=on_event))
    assert started.wait(60)
    engine.close()
    assert not any(decoder.thread.is_alive() for decoder in engine.decoders)
    assert events[-1] == {"type": "error", "message": "the playground is shutting down"}


@contextmanager
def served(app, stopped: threading.Event | None = None):
    """The app on a free loopback port, in a thread, as `make playground` serves it; yields its base
    URL. Setting `stopped` stops the server as Ctrl+C would."""
    server = PlaygroundServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    if stopped is not None:
        threading.Thread(target=lambda: (stopped.wait(), setattr(server, "should_exit", True)), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def app(tmp_path):
    for seed, name in ((0, "first"), (1, "second")):
        tiny_gpt(seed).to_hf(str(tmp_path / name))
    cfg = load_config([f"checkpoint={tmp_path / 'first'}", f"playground.compare={tmp_path / 'second'}",
                       "device=cpu", "playground.max_new_tokens=400", "prompt=Once upon a time"])
    return build_app(cfg)


@pytest.fixture
def playground(app):
    with served(app) as url:
        yield url


def test_a_page_that_goes_away_frees_its_row(app):
    body = {"prompt": "Hello", "max_new_tokens": 400, "temperature": 0.8, "top_k": 40, "top_p": None,
            "repetition_penalty": 1.0, "seed": 3, "model": "first"}
    decoders, finished = app.state.engines["first"].decoders, []
    for decoder in decoders:
        decoder._finish = lambda row, now, finish=decoder._finish: (finished.append(row), finish(row, now))

    def rows_in_use() -> int:
        return sum(state is not None for decoder in decoders for state in decoder.active)

    with served(app) as url:
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=60) as response:
            next(response.iter_lines())  # the first token came: its request holds a row
            assert rows_in_use() == 1
        for _ in range(100):  # the connection is closed: the request is cancelled within a few steps
            if not rows_in_use():
                break
            time.sleep(0.05)
        assert not rows_in_use() and finished == []  # cancelled, not run to its 400 tokens


def test_stopping_the_server_ends_a_stream_in_flight_at_once(app):
    body = {"prompt": "Hello", "max_new_tokens": 400, "temperature": 0.8, "top_k": 40, "top_p": None,
            "repetition_penalty": 1.0, "seed": 3, "model": "first"}
    stop = threading.Event()
    with served(app, stop) as url:
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=60) as response:
            lines = response.iter_lines()
            next(lines)
            stop.set()  # uvicorn would wait for the stream's 400 tokens before the app's shutdown
            events = [json.loads(line) for line in lines if line]
    assert events[-1] == {"type": "error", "message": "the playground is shutting down"} and len(events) < 399


def test_the_stream_carries_tokens_then_the_figures_and_bad_values_get_one_line(playground):
    body = {"prompt": "Hello", "max_new_tokens": 12, "temperature": 0.8, "top_k": 40, "top_p": None,
            "repetition_penalty": 1.0, "seed": 3, "model": "second"}
    with httpx.stream("POST", f"{playground}/api/generate", json=body, timeout=60) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert [e["type"] for e in events][-1] == "done" and events[-1]["tokens"] == 12
    assert events[-1]["time_to_first_token_s"] > 0 and events[-1]["tokens_per_s"] > 0
    bad = httpx.post(f"{playground}/api/generate", json={**body, "top_p": 2}, timeout=10)
    assert bad.status_code == 422 and bad.json() == {"error": "top_p=2: Input should be less than or equal to 1"}
    long = httpx.post(f"{playground}/api/generate", json={**body, "max_new_tokens": 5000}, timeout=10)
    assert "at most 400 here (playground.max_new_tokens)" in long.json()["error"]
    unknown = httpx.post(f"{playground}/api/generate", json={**body, "model": "third"}, timeout=10)
    assert unknown.json()["error"] == "model=third: not served here (one of first, second)"


def test_the_page_streams_text_side_by_side_and_shows_a_bad_value(playground, browser, tmp_path):
    page = browser.new_page()
    page.goto(playground)
    assert page.locator(".pane h3").all_inner_texts() == ["first", "second"]
    page.fill("#prompt", "The history of the city")
    page.fill("#max_new_tokens", "400")
    page.click("#generate")
    first = page.locator(".pane").first
    page.wait_for_function("document.querySelectorAll('.pane')[0].querySelectorAll('.tok').length > 3")
    early = first.locator(".tok").count()
    assert "done" not in first.locator(".stats").inner_text()  # still streaming
    page.wait_for_function("[...document.querySelectorAll('.stats')].every(s => s.textContent.includes('done'))",
                           timeout=120_000)
    assert first.locator(".tok").count() > early  # the text grew while we watched
    for stats in page.locator(".stats").all_inner_texts():
        assert "tokens/s · first token" in stats and float(stats.split(" tokens/s")[0]) > 0
    first.locator(".tok").nth(2).hover()
    assert page.locator("#tip").is_visible() and page.inner_text("#tip").startswith("p = ")
    assert len(page.inner_text("#tip").splitlines()) == 6  # its probability, then five alternatives
    assert first.locator(".text").inner_text().startswith("The history of the city")
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    page.fill("#top_p", "2")
    page.click("#generate")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.inner_text("#error") == "top_p=2: Input should be less than or equal to 1"
