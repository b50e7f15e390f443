"""Sampling text from a GPT with a KV cache: temperature, top-k, top-p, repetition penalty,
stopping at <|endoftext|>, deterministic for a seed, streaming tokens as they come."""
from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from model.bpe import EOT, gpt2_encoding

DONE_CHECK_EVERY = 16  # steps between looks at "has every row ended?", each one a wait for the device
ROW_CHUNK = 512  # entries per chunk when a row of logits is reduced in two stages
SMALLEST_CACHE = 128  # positions; caches come in powers of two from here up to the context
CANDIDATES = 256  # top-k up to this many, and top-p first, look among this many likeliest tokens


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor | None, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's repetition penalty, per row (`penalty` (B, 1)): tokens marked in `seen` (B, V) become
    less likely, whatever their sign."""
    if seen is None:
        return logits
    return torch.where(seen, repeated(logits, penalty), logits)


def repeated(logits: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Logits of tokens seen before, made less likely by `penalty`."""
    return torch.where(logits > 0, logits / penalty, logits * penalty)


def chunked(rows: torch.Tensor) -> torch.Tensor:
    """(B, V) as (B, chunks, ROW_CHUNK), padded with -inf. On a GPU, a reduction over one 50k-long row
    runs in one thread block, and a top-k over it as a radix select of many kernels; reducing the
    chunks first, then their results, spreads the work and gives the same answer (on a CPU, where
    it measured ten times slower, rows are reduced whole)."""
    return F.pad(rows, (0, -rows.shape[1] % ROW_CHUNK), value=float("-inf")).view(rows.shape[0], -1, ROW_CHUNK)


def kth_largest(rows: torch.Tensor, k: torch.Tensor, k_max: int) -> torch.Tensor:
    """Each row's k-th largest value, (B, 1), for a k per row (B, 1) of at most `k_max`; -inf where
    k is 0 (no limit). From the `k_max` largest of the chunks' `k_max` largest."""
    k_max = min(k_max, rows.shape[1])
    best = (chunk_tops(rows, k_max) if rows.is_cuda else rows).topk(k_max, dim=-1).values  # largest first
    return best.gather(1, k.clamp(1, k_max) - 1).masked_fill(k == 0, float("-inf"))


def chunk_tops(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest of each chunk of each row, (B, chunks * k): they hold the row's k largest."""
    return chunked(rows).topk(min(k, ROW_CHUNK), dim=-1, sorted=False).values.flatten(1)


def top_candidates(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest entries, largest first, and their columns."""
    k = min(k, rows.shape[1])
    if not rows.is_cuda:
        return rows.topk(k, dim=-1)
    values, within = chunked(rows).topk(min(k, ROW_CHUNK), dim=-1)
    columns = within + torch.arange(0, values.shape[1] * ROW_CHUNK, ROW_CHUNK, device=rows.device)[None, :, None]
    best, where = values.flatten(1).topk(k, dim=-1)
    return best, columns.flatten(1).gather(1, where)


def row_argmax(rows: torch.Tensor) -> torch.Tensor:
    """Each row's first largest entry, (B, 1)."""
    return chunked_argmax(rows) if rows.is_cuda else rows.argmax(-1, keepdim=True)


def chunked_argmax(rows: torch.Tensor) -> torch.Tensor:
    """`row_argmax` through the chunks' maxima."""
    best, within = chunked(rows).max(-1)
    chunk = best.argmax(-1, keepdim=True)
    return chunk * ROW_CHUNK + within.gather(1, chunk)


def sorted_nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The logits with the tokens outside each row's nucleus set to -inf, by a full sort of each row:
    the smallest set of likeliest tokens whose probabilities reach the row's `top_p` (B, 1); a row
    with top_p 1 keeps every token."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    outside = (sorted_probs.cumsum(-1) - sorted_probs > top_p) & (top_p < 1)
    return logits.scatter(1, order, sorted_logits.masked_fill(outside, float("-inf")))


def exponential_noise(noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fill `noise` with Exp(1) draws, as -log U: on a CPU a seventh of `exponential_`'s time, which
    was most of a small model's decoding step."""
    return noise.uniform_(generator=generator).log_().neg_()


class Race(NamedTuple):
    """A decode step's sampling before the noise. Most rows race among their likeliest tokens, the
    candidates: `scores` (B, W), largest first, -inf where the row's filters leave a token out, and
    their tokens `ids`, both None when no row does. The `open_rows` race over the whole vocabulary
    instead, with `open_scores` (b, V); their candidates, if any, are unused."""

    scores: torch.Tensor | None
    ids: torch.Tensor | None
    open_rows: torch.Tensor
    open_scores: torch.Tensor | None


class Sampler:
    """Picks each row's next token from the logits, with settings of its own per row, each a (B, 1)
    tensor: temperature (0: greedy), top_k (0: none), top_p (1: none) and repetition penalty (1: none).

    Sampling is an exponential race: with E_i ~ Exp(1) drawn from the seeded generator, argmax
    p_i / E_i is token i with probability p_i. Unlike torch.multinomial it has no data-dependent
    step, so the whole decode step, sampling included, fits in one CUDA graph. It is run in log
    space, argmax logit_i - log E_i, where the softmax cancels out.

    Where a row's race is run depends only on its own settings and logits, never on the other rows,
    so a row samples alike alone or batched with any others:
    - a row with a top k of at most CANDIDATES (a "ranked" row) races among its k likeliest tokens
      and draws CANDIDATES noise values a step, one per column (on a CPU, drawing one per vocabulary
      entry was most of a step's sampling);
    - every other row draws one noise value per vocabulary entry. A row with only a top p races
      among its CANDIDATES likeliest tokens when its nucleus lies among them (that depends on the
      logits), each with its own token's noise, so the winner is the one a race over the whole
      vocabulary would have; the rest race over the whole vocabulary.

    `GraphSampler`, below, is the variant for a captured decode step.
    """

    def __init__(self, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, penalty: torch.Tensor):
        self.temperature, self.top_k, self.top_p, self.penalty = temperature, top_k, top_p, penalty
        self.settings_changed()

    @classmethod
    def alike(cls, batch: int, device: torch.device | str, temperature: float, top_k: int | None,
              top_p: float | None, repetition_penalty: float) -> Sampler:
        """`batch` rows with the same settings (None: that filter is off)."""
        def column(value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((batch, 1), value, dtype=dtype, device=device)

        return cls(column(temperature, torch.float32), column(top_k or 0, torch.long),
                   column(1.0 if top_p is None else top_p, torch.float32), column(repetition_penalty, torch.float32))

    def set_row(self, row: int, temperature: float, top_k: int | None, top_p: float | None,
                repetition_penalty: float) -> None:
        self.temperature[row], self.top_k[row] = temperature, top_k or 0
        self.top_p[row], self.penalty[row] = 1.0 if top_p is None else top_p, repetition_penalty
        self.settings_changed()

    def subset(self, rows: list[int]) -> Sampler:
        """The sampler of some of the rows, as a batch of their own."""
        return type(self)(*(t[rows] for t in (self.temperature, self.top_k, self.top_p, self.penalty)))

    def settings_changed(self) -> None:
        """Read which filters the rows use, once per change of settings, never in a decode step."""
        k, p = self.top_k[:, 0], self.top_p[:, 0]
        ranked, nucleus = (k > 0) & (k <= CANDIDATES), (k == 0) & (p < 1)
        self.ranked, self.row_ranked = ranked[:, None], ranked.tolist()
        self.all_ranked = all(self.row_ranked)
        self.ranked_rows = torch.nonzero(ranked).flatten()
        self.k_max = int(k[ranked].max()) if self.ranked_rows.numel() else 0
        self.k_limit = torch.where(self.ranked, self.top_k, CANDIDATES)  # columns past it leave the race
        self.nucleus_rows = torch.nonzero(nucleus).flatten()
        self.open_rows = torch.nonzero(~ranked & ~nucleus).flatten()
        self.unranked_rows = torch.nonzero(~ranked).flatten()  # the open rows of a captured step
        self.k_largest = int(k.max())
        self.uses_top_p = bool((p < 1).any())
        self.penalty_rows = torch.nonzero(self.penalty[:, 0] != 1).flatten()
        self.uses_penalty, self.all_penalty = bool(self.penalty_rows.numel()), bool((self.penalty != 1).all())
        self.greedy = self.temperature == 0
        self.all_greedy = bool(self.greedy.all())

    def noise_widths(self, vocab: int) -> list[int]:
        """Noise values each row draws per step."""
        return [min(CANDIDATES, vocab) if ranked else vocab for ranked in self.row_ranked]

    def noise_width(self, vocab: int) -> int:
        """Noise values a row draws per step (the most any row draws)."""
        return max(self.noise_widths(vocab))

    def penalised(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """The logits with the repetition penalty applied to the rows that ask for it."""
        if not self.uses_penalty:
            return logits
        # the few tokens seen so far, not the vocabulary: a tenth of the time on a CPU
        rows, columns = (seen if self.all_penalty else seen[self.penalty_rows]).nonzero(as_tuple=True)
        rows = rows if self.all_penalty else self.penalty_rows[rows]
        return logits.index_put((rows, columns), repeated(logits[rows, columns], self.penalty[rows, 0]))

    def race(self, logits: torch.Tensor, seen: torch.Tensor | None) -> Race:
        """Each row's distribution over the next token, laid out for the race (see `Race`): repeats
        penalised, divided by the temperature, what top-k and top-p leave out at -inf."""
        logits = self.penalised(logits, seen)
        temperature = torch.where(self.greedy, 1.0, self.temperature)
        nucleus_rows, open_rows = self.race_rows()
        scores = ids = None
        if self.ranked_rows.numel() or nucleus_rows.numel():
            scores, ids = self.candidates(logits, nucleus_rows)
            columns = torch.arange(scores.shape[1], device=scores.device)
            scores = scores.masked_fill(columns >= self.k_limit, float("-inf")) / temperature
            if self.uses_top_p:
                scores, short = self.nucleus_of_candidates(scores, logits, temperature, nucleus_rows)
                open_rows = torch.cat([open_rows, short]).sort().values if short.numel() else open_rows
        return Race(scores, ids, open_rows, self.open_scores(logits, temperature, open_rows))

    def race_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows with only a top p, which look for their nucleus among their candidates, and the
        rows that race over the whole vocabulary."""
        return self.nucleus_rows, self.open_rows

    def candidates(self, logits: torch.Tensor, nucleus_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's likeliest tokens, largest first: the k of the largest top k among ranked rows
        (padded with -inf), and CANDIDATES for rows that look for their nucleus there (open rows get
        some too, unused)."""
        width = min(CANDIDATES if nucleus_rows.numel() else self.k_max, logits.shape[1])
        if not nucleus_rows.numel() or not self.ranked_rows.numel() or self.k_max >= width:
            return top_candidates(logits, width)
        # every row's k_max largest (a top-k of 40 costs a third of one of 256 on a CPU), then the
        # nucleus rows' wider ones in their place: no copy of the ranked rows' logits
        scores, ids = top_candidates(logits, self.k_max)
        scores, ids = F.pad(scores, (0, width - self.k_max), value=float("-inf")), F.pad(ids, (0, width - self.k_max))
        wide_scores, wide_ids = top_candidates(logits[nucleus_rows], width)
        return scores.index_copy(0, nucleus_rows, wide_scores), ids.index_copy(0, nucleus_rows, wide_ids)

    def nucleus_of_candidates(self, scores: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor,
                              nucleus_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' scores with those outside each row's nucleus at -inf, and the rows with
        only a top p whose nucleus reaches past their candidates (those race over the vocabulary).
        A ranked row's probabilities are over its top k, a top-p-only row's over the vocabulary."""
        total = scores.logsumexp(-1, keepdim=True)
        if nucleus_rows.numel():
            total = total.index_copy(0, nucleus_rows,
                                     (logits[nucleus_rows] / temperature[nucleus_rows]).logsumexp(-1, keepdim=True))
        probs = (scores - total).exp()
        before = probs.cumsum(-1) - probs
        scores = scores.masked_fill((before > self.top_p) & (self.top_p < 1), float("-inf"))
        reach = (before[:, -1] + probs[:, -1])[nucleus_rows]
        return scores, nucleus_rows[reach <= self.top_p[nucleus_rows, 0]]

    def open_scores(self, logits: torch.Tensor, temperature: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
        """The scores over the whole vocabulary of the rows that race over it."""
        if not rows.numel():
            return None
        every = rows.numel() == logits.shape[0]  # then rows is every row in order: no copies
        logits = logits if every else logits[rows]
        top_k, top_p = (self.top_k, self.top_p) if every else (self.top_k[rows], self.top_p[rows])
        if self.k_largest > CANDIDATES:
            logits = logits.masked_fill(logits < kth_largest(logits, top_k, self.k_largest), float("-inf"))
        logits = logits / (temperature if every else temperature[rows])
        return sorted_nucleus(logits, top_p) if self.uses_top_p else logits

    def choose(self, race: Race, noise: torch.Tensor) -> torch.Tensor:
        """Each row's next token (B, 1): the likeliest for a greedy row, else the winner of its race
        against `noise` (unread when greedy): a ranked row's by column, the others' by token."""
        tokens = None
        if race.scores is not None:
            width = race.scores.shape[1]
            own = noise[:, :width] if self.all_ranked else torch.where(self.ranked, noise[:, :width], noise.gather(1, race.ids))
            tokens = race.ids.gather(1, self.winner(race.scores, own, self.greedy))
        rows = race.open_rows
        if race.open_scores is not None:
            every = rows.numel() == noise.shape[0]
            winners = self.winner(race.open_scores, noise if every else noise[rows], self.greedy if every else self.greedy[rows])
            tokens = winners if tokens is None else tokens.index_copy(0, rows, winners)
        return tokens

    def winner(self, scores: torch.Tensor, noise: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
        if self.all_greedy:
            return row_argmax(scores)
        return row_argmax(torch.where(greedy, scores, scores - noise.log()))

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Each row's next token (B, 1)."""
        return self.choose(self.race(logits, seen), noise)


class GraphSampler(Sampler):
    """`Sampler` inside a captured decode step (torch.compile, CUDA graphs on a GPU), where every
    shape is fixed before the step runs: the repetition penalty is one pass over the vocabulary, and
    a row with only a top p races over the whole vocabulary at once (where its nucleus lies depends
    on the logits). It picks the same tokens as `Sampler` from the same noise."""

    def penalised(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        return penalise_repeats(logits, seen, self.penalty) if self.uses_penalty else logits

    def race_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.nucleus_rows[:0], self.unranked_rows


def decode_step(model: torch.nn.Module, sampler: Sampler, token: torch.Tensor, cache, seen: torch.Tensor | None,
                noise: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """One token per row after `token`: finished rows only pad with <|endoftext|>. Updates the cache,
    `seen` and `done` in place, so that it can run as one captured graph."""
    nxt = sampler(model(token, cache)[:, -1, :].float(), seen, noise).masked_fill(done[:, None], EOT)
    if seen is not None:
        seen.scatter_(1, nxt, True)
    done |= nxt[:, 0] == EOT
    return nxt


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             generator: torch.Generator | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None, compile: bool = False) -> torch.Tensor:
    """Extend (B, T) token ids by up to `max_new_tokens`, stopping once every row emitted <|endoftext|>.

    When the context fills up, the cache is rebuilt from the last half of the sequence.
    `compile=True` decodes with a fixed-shape cache under torch.compile (CUDA graphs on a GPU),
    because one decode step is too small to keep a GPU busy launch by launch.
    """
    model.eval()
    if max_new_tokens == 0:
        return ids
    batch, block, vocab = ids.shape[0], model.config.block_size, model.config.vocab_size
    sampler = (GraphSampler if compile else Sampler).alike(batch, ids.device, temperature, top_k, top_p,
                                                           repetition_penalty)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    noise = torch.empty(batch, sampler.noise_width(vocab), device=ids.device)
    out = torch.full((batch, max_new_tokens), EOT, dtype=ids.dtype, device=ids.device)
    token = torch.empty(batch, 1, dtype=ids.dtype, device=ids.device)  # the step's input, at one address
    cache = model.new_cache(batch, cache_size(ids.shape[1] + max_new_tokens, block))
    step = decode_step
    if compile:
        step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
        for tensor in (*cache.kv, cache.position, cache.slots, token, noise, done, seen):
            if tensor is not None:  # updated in place: a CUDA graph may keep them only at fixed addresses
                torch._dynamo.mark_static_address(tensor)

    def fresh_noise() -> torch.Tensor:
        return noise if temperature == 0 else exponential_noise(noise, generator)  # greedy needs none

    def prefill(context: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The token after `context`, from a cache refilled with it, and the cache's length."""
        cache.reset()
        nxt = decode_step(model, sampler, context, cache, seen, fresh_noise(), done)
        if compile:
            cache.make_static()
        return nxt, context.shape[1]

    nxt, length = prefill(ids[:, -block:])
    for i in range(max_new_tokens):
        out[:, i:i + 1] = nxt  # a copy: a captured graph overwrites its output on the next replay
        if on_token is not None:
            on_token(out[:, i:i + 1])
        if i + 1 == max_new_tokens or ((on_token is not None or i % DONE_CHECK_EVERY == 0) and done.all()):
            break
        if length == cache.size:  # the context is full
            nxt, length = prefill(torch.cat([ids, out[:, :i + 1]], dim=1)[:, -block // 2:])
        else:
            token.copy_(nxt)
            nxt = step(model, sampler, token, cache, seen, fresh_noise(), done)
            length += 1
    return torch.cat([ids, out[:, :tokens_until_all_ended(out)]], dim=1)


def cache_size(tokens: int, block: int) -> int:
    """Positions to preallocate for `tokens`: a power of two, so that torch.compile captures a
    graph for only a few sizes, yet the fixed-shape step attends over little more than it needs."""
    return min(block, max(SMALLEST_CACHE, 1 << (tokens - 1).bit_length()))


def tokens_until_all_ended(new: torch.Tensor) -> int:
    """How many columns of `new` (B, N) to keep: through the first <|endoftext|> of the row that ended last."""
    ended = new == EOT
    first = torch.where(ended.any(1), ended.int().argmax(1), new.shape[1] - 1)
    return int(first.max()) + 1


def sample_text(model: torch.nn.Module, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                top_k: int | None = 40, seed: int = 0, top_p: float | None = None, repetition_penalty: float = 1.0,
                stream: Callable[[str], None] | None = None, compile: bool = False) -> str:
    """The prompt followed by one sampled continuation, cut at <|endoftext|>. `stream`, when given,
    receives the prompt and then each piece of text as it is generated."""
    enc = gpt2_encoding()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([enc.encode_ordinary(prompt)], device=device)
    text = codecs.getincrementaldecoder("utf-8")("replace")  # a character can span several tokens

    def emit(token: torch.Tensor) -> None:
        value = token.item()
        if value != EOT and (piece := text.decode(enc.decode_bytes([value]))):
            stream(piece)

    if stream:
        stream(prompt)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, generator,
                   emit if stream else None, compile)[0].tolist()
    new = out[ids.shape[1]:]
    if EOT in new:
        new = new[: new.index(EOT)]
    return prompt + enc.decode(new)
