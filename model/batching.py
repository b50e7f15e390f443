"""Continuous batching for the playground: many sampling requests decoded together, one token per
request per step, each request with its own settings, position and seeded generator.

A request joins as soon as a row of the batch is free: its prompt is run alone (the prefill), its
keys and values are copied into its row of the batch's KV cache, and from then on every decode
step advances all rows at once. A request leaves when it ends (<|endoftext|> or its token budget),
and its row takes the next request. The batch always has the same number of rows, finished or
not, so every matrix product has the same shape and a row's numbers never depend on its
neighbours: a request's text is the same alone or batched, for the same seed.

The rows may be shared among several decoding threads (`playground.decoders`), each with a batch
of its own of the same size, so that a request samples the same text whichever decoder takes it.
"""
from __future__ import annotations

import codecs
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from model.bpe import EOT, gpt2_encoding
from model.sample import Race, Sampler, cache_size, exponential_noise

ALTERNATIVES = 5  # the likeliest tokens shown beside each sampled one
SHUTTING_DOWN = "the playground is shutting down"


@dataclass
class Request:
    """One prompt to continue, with its sampling settings. `on_event` receives, from the decoding
    thread, a `token` event per piece of text and one `done` (or `error`) event at the end."""

    prompt: str
    max_new_tokens: int
    on_event: Callable[[dict[str, Any]], None]
    temperature: float = 0.8
    top_k: int | None = 40
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the caller when nobody reads the events any more


@dataclass
class Row:
    """A request being decoded: its generator, its tokens so far, bytes waiting to form a character."""

    request: Request
    generator: torch.Generator
    tokens: list[int]
    prompt_tokens: int
    cached: int = 0  # positions of its row of the batch's KV cache written so far
    text: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    pending: bool = False  # bytes of a character still incomplete
    pending_p: float = 1.0
    pending_alternatives: list[tuple[str, float]] = field(default_factory=list)
    first_token_at: float | None = None

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_tokens


class BatchedGenerator:
    """Requests decoded in continuous batches: `decoders` threads share the `rows` (rounded up to a
    multiple of them), each decoding its own rows in one batch with `threads` intra-op threads
    (None: torch's default). `submit` queues a request; a decoder holding the fewest requests
    takes it."""

    def __init__(self, model: torch.nn.Module, rows: int = 8, decoders: int = 1, threads: int | None = None):
        self.waiting: queue.Queue[Request | None] = queue.Queue()
        self.stop = threading.Event()
        self.decoders = [Decoder(model.eval(), -(-rows // decoders), self.waiting, self.stop, threads)
                         for _ in range(decoders)]
        for decoder in self.decoders:
            decoder.peers = self.decoders

    def submit(self, request: Request) -> None:
        self.waiting.put(request)

    def close(self) -> None:
        """Stop the decoders and wait for them; the requests they hold or that wait end with an error
        event. (A decoding thread still inside torch when the interpreter exits can abort it.)"""
        self.stop.set()
        for _ in self.decoders:
            self.waiting.put(None)  # wakes a decoder waiting for a request
        for decoder in self.decoders:
            decoder.thread.join()
        while not self.waiting.empty():  # requests no decoder took
            if (request := self.waiting.get()) is not None:
                request.on_event({"type": "error", "message": SHUTTING_DOWN})


def decoding_plan(device: torch.device, decoders: int | str = "auto", engines: int = 1) -> tuple[int, int | None]:
    """How many decoders share a batch's rows on `device`, and the intra-op threads of each, when
    `engines` batches (one per checkpoint served) share the machine.

    "auto" is one decoder: on a GPU its kernels queue on the one device anyway; on a CPU it gets the
    cores (split among the engines), and one batch of 8 rows on two threads outran two batches of
    4 rows on a thread each (`make bench-playground`, gpt2-tiny, 2 cores: 2,741 against 2,163 tokens/s),
    as long as no other thread keeps an OpenMP pool (`leave_cores_to_decoders`)."""
    if device.type != "cpu":
        return (1 if decoders == "auto" else decoders), None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not on macOS
    decoders = 1 if decoders == "auto" else decoders
    return decoders, max(1, cores // (decoders * engines))


def leave_cores_to_decoders() -> None:
    """Keep the calling thread's torch operations on one thread, before it runs any that could start
    an OpenMP pool. Once a process holds more OpenMP threads than cores, even idle ones, libgomp
    stops spinning between parallel regions and sleeps: a decoder on two threads then took 4.2 ms a
    step instead of 2.3. The decoders set their own threads."""
    torch.set_num_threads(1)


class Decoder:
    """A decoding thread over a fixed batch of `rows` rows of one model, taking requests from
    `waiting` until `stop` is set."""

    def __init__(self, model: torch.nn.Module, rows: int, waiting: queue.Queue[Request | None], stop: threading.Event,
                 threads: int | None):
        self.model, self.rows, self.waiting, self.stop, self.threads = model, rows, waiting, stop, threads
        self.device = next(model.parameters()).device
        self.enc = gpt2_encoding()
        self.block = model.config.block_size
        self.cache = model.new_cache(rows, self.block)
        self.cache.make_static()
        self.sampler = Sampler.alike(rows, self.device, 1.0, None, None, 1.0)
        self.seen = torch.zeros(rows, model.config.vocab_size, dtype=torch.bool, device=self.device)
        self.noise = torch.ones(rows, model.config.vocab_size, device=self.device)
        self.token = torch.full((rows, 1), EOT, dtype=torch.long, device=self.device)
        self.active: list[Row | None] = [None] * rows
        self.samplers: dict[tuple[int, ...], Sampler] = {}  # of groups of rows, while their requests last
        self.peers: list[Decoder] = [self]  # the decoders sharing `waiting`
        self.thread = threading.Thread(target=self._loop, name="playground-decoder", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # this thread's own OpenMP and MKL settings
        while not self.stop.is_set():
            self._admit(block=not any(self.active))
            if any(self.active) and not self.stop.is_set():
                try:
                    self._step()
                except Exception as err:  # say so to every request in the batch, and go on serving
                    self._fail_all(str(err))
        self._fail_all(SHUTTING_DOWN)

    def _admit(self, block: bool) -> None:
        """Give each free row a waiting request (waiting for one when the batch is empty), as long as
        no other decoder has fewer requests: that one takes the next on its next step, so that the
        requests spread evenly and every decoder's step stays short."""
        for row in range(self.rows):
            if self.active[row] is not None:
                continue
            if any(peer.in_use() < self.in_use() for peer in self.peers):
                return
            try:
                request = self.waiting.get(block=block)
            except queue.Empty:
                return
            if request is None:  # woken to stop
                return
            block = False
            if request.cancelled:
                continue
            try:
                self._start(row, request)
            except Exception as err:  # a request that cannot start must not stop the others
                self._release(row)
                request.on_event({"type": "error", "message": str(err)})

    def in_use(self) -> int:
        return sum(state is not None for state in self.active)

    def _fail_all(self, message: str) -> None:
        for row, state in enumerate(self.active):
            if state is not None:
                self._release(row)
                state.request.on_event({"type": "error", "message": message})

    @torch.no_grad()
    def _start(self, row: int, request: Request) -> None:
        ids = self.enc.encode_ordinary(request.prompt) or [EOT]  # an empty prompt starts a new document
        generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.sampler.set_row(row, request.temperature, request.top_k, request.top_p, request.repetition_penalty)
        self.samplers.clear()
        self.seen[row] = False
        self.seen[row, ids] = True
        state = Row(request, generator, list(ids), len(ids))
        self.active[row] = state
        self._prefill(row, ids[-self.block:])

    def _prefill(self, row: int, context: list[int]) -> None:
        """Run `context` alone into a cache of one row, copy it into the batch's cache at `row`, and
        draw the row's next token from its last position."""
        single = self.model.new_cache(1, self.block)
        logits = self.model(torch.tensor([context], device=self.device), single)[:, -1, :].float()
        for batch_kv, row_kv in zip(self.cache.kv, single.kv):
            batch_kv[:, row] = row_kv[:, 0]
        self.cache.position[row] = self.active[row].cached = len(context)
        [drawn] = self._draw([row], logits)
        token = int(self.token[row, 0])
        self.seen[row, token] = True
        self._emit(row, token, *drawn)

    @torch.no_grad()
    def _step(self) -> None:
        """One token for every row: refill the cache of rows whose context is full, then decode."""
        for row, state in enumerate(self.active):
            if state is not None and state.request.cancelled:
                self._release(row)
            elif state is not None and state.cached == self.block:
                self._prefill(row, state.tokens[-self.block // 2:])
        rows = [row for row, state in enumerate(self.active) if state is not None]
        if not rows:  # every request was cancelled
            return
        if len(rows) < self.rows:  # a free row never runs out of cache
            self.cache.position[[row for row, state in enumerate(self.active) if state is None]] = 0
        # attention reads the positions the fullest row has reached, not the whole context: on gpt2
        # (1,024 positions) an 8-row step took 21 ms instead of 37 on a CPU
        self.cache.window = cache_size(max(self.active[row].cached for row in rows) + 1, self.block)
        logits = self.model(self.token, self.cache)[:, -1, :].float()
        for row in rows:
            self.active[row].cached += 1
        drawn = self._draw(rows, logits if len(rows) == self.rows else logits[rows])
        tokens = self.token[rows, 0].tolist()
        self.seen[rows, tokens] = True
        for row, token, result in zip(rows, tokens, drawn):
            self._emit(row, token, *result)

    def _draw(self, rows: list[int], logits: torch.Tensor) -> list[tuple[float, list[tuple[int, float]]]]:
        """Sample the next token of the batch's `rows`, whose logits these are, into `self.token`;
        for each row, the token's probability and the likeliest alternatives with theirs. Rows are
        sampled independently, each request's noise from its own generator, as if it were alone."""
        if tuple(rows) not in self.samplers:  # settings change only as requests come and go
            self.samplers[tuple(rows)] = self.sampler.subset(rows)
        sampler = self.samplers[tuple(rows)]
        for row, width in zip(rows, sampler.noise_widths(self.noise.shape[1])):
            if self.active[row].request.temperature != 0:
                exponential_noise(self.noise[row, :width], self.active[row].generator)
        every = len(rows) == self.rows  # then no copies of the batch's rows
        seen = (self.seen if every else self.seen[rows]) if sampler.uses_penalty else None
        race = sampler.race(logits, seen)
        tokens = sampler.choose(race, self.noise if every else self.noise[rows])
        self.token[rows] = tokens
        return likelihoods(race, tokens)

    def _emit(self, row: int, token: int, p: float, alternatives: list[tuple[int, float]]) -> None:
        """Hand the row's new token to its request (text once its bytes form whole characters, with
        its probability and the alternatives), and end the request at <|endoftext|> or its budget."""
        state, now = self.active[row], time.perf_counter()
        state.first_token_at = state.first_token_at or now
        state.tokens.append(token)
        if token != EOT:
            if not state.pending:
                state.pending_alternatives = [(self.enc.decode_bytes([t]).decode("utf-8", "replace"), round(q, 4))
                                              for t, q in alternatives]
            state.pending_p *= p
            text = state.text.decode(self.enc.decode_bytes([token]))  # a character may span tokens
            state.pending = not text
            if text:
                state.request.on_event({"type": "token", "text": text, "p": round(state.pending_p, 4),
                                        "alternatives": state.pending_alternatives})
                state.pending_p = 1.0
        if token == EOT or state.generated >= state.request.max_new_tokens:
            self._finish(row, now)

    def _release(self, row: int) -> Row:
        """Free a row; returns the request state it held."""
        state, self.active[row] = self.active[row], None
        self.samplers.clear()
        return state

    def _finish(self, row: int, now: float) -> None:
        state = self._release(row)
        if tail := state.text.decode(b"", final=True):  # a character cut off by the token budget
            state.request.on_event({"type": "token", "text": tail, "p": round(state.pending_p, 4),
                                    "alternatives": state.pending_alternatives})
        new = state.tokens[state.prompt_tokens:]
        decoding = now - state.first_token_at
        state.request.on_event({
            "type": "done", "tokens": len(new), "text": self.enc.decode([t for t in new if t != EOT]),
            "time_to_first_token_s": round(state.first_token_at - state.request.submitted, 4),
            "tokens_per_s": round((len(new) - 1) / decoding, 1) if len(new) > 1 and decoding > 0 else None})


def likelihoods(race: Race, tokens: torch.Tensor) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each row, the probability of its sampled token, and its ALTERNATIVES likeliest tokens
    with theirs (those it can sample: a row with a top k of 3 has 3)."""
    rows: list[tuple[float, list[tuple[int, float]]]] = []
    if race.scores is not None:
        probs = race.scores.softmax(-1)
        chosen = (probs * (race.ids == tokens)).sum(-1).tolist()
        top = probs[:, :ALTERNATIVES].tolist(), race.ids[:, :ALTERNATIVES].tolist()
        rows = [(p, [(t, q) for q, t in zip(*alternatives) if q > 0]) for p, *alternatives in zip(chosen, *top)]
    if race.open_scores is not None:  # their probabilities over the vocabulary
        probs = race.open_scores.softmax(-1)
        chosen = probs.gather(1, tokens[race.open_rows])[:, 0].tolist()
        top_p, top_ids = probs.topk(ALTERNATIVES, dim=-1)
        found = [(p, [(t, q) for q, t in zip(qs, ts) if q > 0]) for p, qs, ts in zip(chosen, top_p.tolist(), top_ids.tolist())]
        rows = rows or [None] * tokens.shape[0]
        for row, result in zip(race.open_rows.tolist(), found):
            rows[row] = result
    return rows
