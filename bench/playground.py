"""`make bench-playground`: the playground's continuous batch beside the command line's decoding.

Eight requests with different prompts, lengths and sampling settings arrive one after another and
are decoded together (`model.batching`: 8 rows, shared by `playground.decoders` threads); the
anchor is the same eight generated one after another by `make generate`'s path
(`model.sample.generate`, batch 1), in the same run. Goal: the batch's aggregate tokens/s at
least 3x the anchor's.

The gap between arrivals is counted in the anchor's own time per token, measured in the same run:
`stagger_tokens` (10) tokens apart, so the last request arrives 70 tokens after the first, before
any of them (96-160 tokens) could have ended even alone: the 8 streams are concurrent on any
machine. A gap fixed in milliseconds (`stagger_ms=`) measures the clock as much as the batching:
no batch can end before its last arrival has decoded its tokens, so the faster the decoding, the
larger a share of the time the arrivals themselves take, and the lower the ratio any batch could
reach (the bench prints that ceiling).

    python -m bench.playground [checkpoint=PATH | model=gpt2] [stagger_tokens=10 | stagger_ms=50] [repeats=5] [device=auto] [decoders=auto]
Default: the demo's checkpoint (`make demo` writes it); `model=NAME` uses random weights of that
size instead (e.g. gpt2 on a GPU, where no checkpoint is at hand).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

import torch

from flows.common import checkpoint_path, load_config
from flows.playground import continuous_batch
from model import GPT, GPTConfig
from model.batching import Request, decoding_plan, leave_cores_to_decoders
from model.bpe import gpt2_encoding
from model.checkpoint import inference_device, inference_dtype, load_gpt
from model.sample import generate, tokens_until_all_ended

REQUESTS = [
    ("The city council voted on Tuesday to", dict(max_new_tokens=128, temperature=0.8, top_k=40)),
    ("Scientists have found that", dict(max_new_tokens=160, temperature=1.0, top_p=0.9, top_k=None)),
    ("In a surprise move, the company", dict(max_new_tokens=96, temperature=0.7, top_k=20)),
    ("The best way to learn a language is", dict(max_new_tokens=144, temperature=0.9, repetition_penalty=1.2)),
    ("Recycling is good for the world.", dict(max_new_tokens=104, temperature=0)),
    ("Here is a recipe for", dict(max_new_tokens=152, temperature=1.1, top_k=50, top_p=0.95)),
    ("The match ended with", dict(max_new_tokens=112, temperature=0.6, top_k=10)),
    ("According to the report,", dict(max_new_tokens=136, temperature=0.8, top_k=40, repetition_penalty=1.1)),
]


def load(options: dict[str, str]) -> GPT:
    device = options.get("device", "auto")
    if "model" in options:
        torch.manual_seed(0)
        settings = load_config([f"model={options['model']}"])["model"]
        target = inference_device(device)
        return GPT(GPTConfig.from_settings(settings, padded_vocab_size=50257)).to(
            target, inference_dtype("auto", target)).eval().pack_for_cpu()  # as load_gpt gives it
    cfg = load_config([f"checkpoint={options['checkpoint']}"] if "checkpoint" in options else [])
    return load_gpt(checkpoint_path(cfg), device, "auto")


def one_after_another(model: GPT, threads: int) -> tuple[float, int]:
    """Seconds and new tokens for the requests generated one by one, as `make generate` does (on
    `threads` threads, its default), in a thread of its own: its OpenMP pool ends with it, and
    leaves the decoders' threads their cores (`leave_cores_to_decoders`)."""
    result: list[tuple[float, int]] = []
    worker = threading.Thread(target=lambda: result.append(generate_each(model, threads)))
    worker.start()
    worker.join()
    return result[0]


def generate_each(model: GPT, threads: int) -> tuple[float, int]:
    """`one_after_another`'s work, in the calling thread."""
    torch.set_num_threads(threads)
    enc, device, tokens = gpt2_encoding(), next(model.parameters()).device, 0
    start = time.perf_counter()
    for seed, (prompt, settings) in enumerate(REQUESTS):
        s = {"temperature": 0.8, "top_k": 40, "top_p": None, "repetition_penalty": 1.0} | settings
        ids = torch.tensor([enc.encode_ordinary(prompt)], device=device)
        out = generate(model, ids, s["max_new_tokens"], s["temperature"], s["top_k"], s["top_p"],
                       s["repetition_penalty"], torch.Generator(device).manual_seed(seed))
        tokens += tokens_until_all_ended(out[:, ids.shape[1]:]) if out.shape[1] > ids.shape[1] else 0
    return time.perf_counter() - start, tokens


def batched(model: GPT, stagger_s: float, decoders: int | str) -> tuple[float, int, list[dict]]:
    """Seconds from the first arrival to the last answer, new tokens, and each request's last event
    (in order of arrival), for the requests arriving `stagger_s` apart at the playground's batch."""
    engine = continuous_batch(model, {"batch": len(REQUESTS), "decoders": decoders})
    finished, results = threading.Semaphore(0), [{}] * len(REQUESTS)

    def collector(i: int) -> Callable[[dict], None]:
        def on_event(event: dict) -> None:
            if event["type"] in ("done", "error"):
                results[i] = event
                finished.release()
        return on_event

    start = time.perf_counter()
    for seed, (prompt, settings) in enumerate(REQUESTS):
        engine.submit(Request(prompt, on_event=collector(seed), seed=seed, **settings))
        time.sleep(stagger_s)
    for _ in REQUESTS:
        finished.acquire()
    elapsed = time.perf_counter() - start
    engine.close()
    errors = [r["message"] for r in results if r["type"] == "error"]
    if errors:
        raise SystemExit(f"error: a request failed: {errors[0]}")
    return elapsed, sum(r["tokens"] for r in results), results


def ceiling(results: list[dict], stagger_s: float, seconds_per_token: float) -> float:
    """The shortest time the batch could take: each request from its arrival, one token a step, every
    step as fast as one token one after another (a batch cannot beat its last arrival's chain)."""
    return max(i * stagger_s + r["tokens"] * seconds_per_token for i, r in enumerate(results))


def main(args: list[str]) -> None:
    options = dict(a.split("=", 1) for a in args)
    threads = torch.get_num_threads()  # make generate's
    leave_cores_to_decoders()
    model = load(options)
    repeats = int(options.get("repeats", 5))
    decoders = options.get("decoders", load_config([])["playground"]["decoders"])
    decoders = int(decoders) if decoders != "auto" else decoders
    generate(model, torch.tensor([[50256]], device=next(model.parameters()).device), 8)  # warm-up
    batched(model, 0, decoders)
    first = one_after_another(model, threads)
    stagger = (float(options["stagger_ms"]) / 1000 if "stagger_ms" in options
               else float(options.get("stagger_tokens", 10)) * first[0] / first[1])
    stagger_tokens = stagger * first[1] / first[0]
    # the fastest of `repeats` runs of each, alternating, so that both see the same machine (timings
    # here wobble by 10-20% from one run to the next)
    runs = [(one_after_another(model, threads) if i else first, batched(model, stagger, decoders)) for i in range(repeats)]
    seq_s, seq_tokens = min(run[0] for run in runs)
    batch_s, batch_tokens, results = min((run[1] for run in runs), key=lambda r: r[0])
    seq_rate, batch_rate = seq_tokens / seq_s, batch_tokens / batch_s
    plan = decoding_plan(next(model.parameters()).device, decoders)
    ttft = sorted(r["time_to_first_token_s"] for r in results)
    apart = f"{stagger_tokens:.0f} one-row tokens ({stagger * 1000:.0f} ms)"
    print(f"{len(REQUESTS)} requests, {apart} apart, on {next(model.parameters()).device} "
          f"({model.num_params() / 1e6:.1f}M parameters)")
    print(f"  one after another (make generate's path): {seq_tokens} tokens in {seq_s:.2f} s = {seq_rate:,.1f} tokens/s")
    print(f"  continuous batch (make playground):       {batch_tokens} tokens in {batch_s:.2f} s = {batch_rate:,.1f} tokens/s"
          f"  [{plan[0]} decoder(s) of {-(-len(REQUESTS) // plan[0])} rows, {plan[1] or 'default'} thread(s) each]")
    best = batch_tokens / ceiling(results, stagger, seq_s / seq_tokens)
    print(f"  ratio {batch_rate / seq_rate:.2f}x; time to first token median "
          f"{1000 * ttft[len(ttft) // 2]:.0f} ms, worst {1000 * ttft[-1]:.0f} ms")
    print(f"  ceiling at this stagger (every step as fast as one token one after another): "
          f"{best:,.1f} tokens/s = {best / seq_rate:.2f}x")
    print(json.dumps({"bench": "playground", "requests": len(REQUESTS), "stagger_ms": round(stagger * 1000, 1),
                      "stagger_tokens": round(stagger_tokens, 1),
                      "sequential_tokens_per_s": round(seq_rate, 1), "batched_tokens_per_s": round(batch_rate, 1),
                      "ratio": round(batch_rate / seq_rate, 2), "ceiling_ratio": round(best / seq_rate, 2), "decoders": plan[0], "ttft_median_s": ttft[len(ttft) // 2]}))


if __name__ == "__main__":
    main(sys.argv[1:])
