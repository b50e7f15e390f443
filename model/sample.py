"""Sampling text from a GPT with a KV cache: temperature, top-k, top-p, repetition penalty,
stopping at <|endoftext|>, deterministic for a seed, streaming tokens as they come."""
from __future__ import annotations

import codecs
from collections.abc import Callable

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
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


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


def nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The logits with the tokens outside each row's nucleus set to -inf: the smallest set of likeliest
    tokens whose probabilities reach the row's `top_p` (B, 1); a row with top_p 1 keeps every token."""
    scores, ids = nucleus_columns(logits, top_p)
    if ids is not None:
        scores = torch.full_like(logits, float("-inf")).scatter(1, ids, scores)
    return scores.where(top_p < 1, logits)


def nucleus_columns(logits: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`nucleus` for rows of top_p below 1, as the CANDIDATES likeliest tokens' scores and columns
    when every row's nucleus lies among them, else over the whole vocabulary (columns None).

    The nucleus is looked for among the candidates, a partial sort (a tenth of a full one on a CPU);
    a row whose candidates hold too little probability is sorted whole. A captured graph cannot
    choose, so under torch.compile every row is sorted whole."""
    if torch.compiler.is_compiling() or logits.shape[1] <= CANDIDATES:
        return sorted_nucleus(logits, top_p), None
    best, order, short = nucleus_of_candidates(logits, top_p)
    if not short.numel():
        return best, order
    kept = torch.full_like(logits, float("-inf")).scatter(1, order, best)
    return kept.index_copy(0, short, sorted_nucleus(logits[short], top_p[short])), None


def nucleus_of_candidates(logits: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's CANDIDATES likeliest logits, largest first, those outside its nucleus at -inf; their
    columns; and the rows whose nucleus reaches past them (probabilities over the whole row)."""
    best, order = logits.topk(CANDIDATES, dim=-1)
    probs = (best - logits.logsumexp(-1, keepdim=True)).exp()
    before = probs.cumsum(-1) - probs
    short = torch.nonzero((before[:, -1:] + probs[:, -1:] <= top_p)[:, 0] & (top_p[:, 0] < 1)).flatten()
    return best.masked_fill(before > top_p, float("-inf")), order, short


def sorted_nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`nucleus` by a full sort of each row."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    outside = (sorted_probs.cumsum(-1) - sorted_probs > top_p) & (top_p < 1)
    return logits.scatter(1, order, sorted_logits.masked_fill(outside, float("-inf")))


def exponential_noise(noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fill `noise` with Exp(1) draws, as -log U: on a CPU a seventh of `exponential_`'s time, which
    was most of a small model's decoding step."""
    return noise.uniform_(generator=generator).log_().neg_()


class Sampler:
    """Picks each row's next token from the logits, with settings of its own per row, each a (B, 1)
    tensor: temperature (0: greedy), top_k (0: none), top_p (1: none) and repetition penalty (1: none).

    Sampling is an exponential race: with E_i ~ Exp(1) drawn from the seeded generator, argmax
    p_i / E_i is token i with probability p_i. Unlike torch.multinomial it has no data-dependent
    step, so the whole decode step, sampling included, fits in one CUDA graph. It is run in log
    space, argmax logit_i - log E_i, where the softmax cancels out.

    When every row keeps a top k of at most CANDIDATES, the race runs among each row's CANDIDATES
    likeliest tokens, those past its k masked (CANDIDATES noise draws a row instead of one per
    vocabulary entry: on a CPU that was most of a step's sampling). The width is the same whatever
    the k, so rows with different k sample alike alone or together.
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
        return Sampler(*(t[rows] for t in (self.temperature, self.top_k, self.top_p, self.penalty)))

    def settings_changed(self) -> None:
        """Read which filters any row uses, once per change of settings, never in a decode step."""
        self.k_max = int(self.top_k.max())
        self.candidates = bool(((self.top_k > 0) & (self.top_k <= CANDIDATES)).all())
        self.top_p_rows = torch.nonzero(self.top_p[:, 0] < 1).flatten()
        self.uses_top_p, self.all_top_p = bool(self.top_p_rows.numel()), bool((self.top_p < 1).all())
        self.penalty_rows = torch.nonzero(self.penalty[:, 0] != 1).flatten()
        self.uses_penalty, self.all_penalty = bool(self.penalty_rows.numel()), bool((self.penalty != 1).all())
        self.greedy = self.temperature == 0
        self.all_greedy = bool(self.greedy.all())

    def width(self, vocab: int) -> int:
        """Noise draws a row needs per step: one per candidate, or one per vocabulary entry."""
        return min(CANDIDATES, vocab) if self.candidates else vocab

    def distribution(self, logits: torch.Tensor, seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores whose softmax is each row's next-token distribution (repeats penalised, divided by
        the temperature, what top-k and top-p leave out at -inf), and each column's token: the
        candidates' (B, k), largest first, or None when the columns are the vocabulary (B, V).
        Rows that all sample from a nucleus get the candidates' columns too whenever every nucleus
        lies among them (in eager mode: the choice depends on the logits)."""
        if self.all_penalty:
            logits = penalise_repeats(logits, seen, self.penalty)
        elif self.uses_penalty:  # only the rows that ask for it: the mask is a pass over the vocabulary
            rows = self.penalty_rows
            logits = logits.index_copy(0, rows, penalise_repeats(logits[rows], seen[rows], self.penalty[rows]))
        ids = None
        if self.candidates:
            logits, ids = top_candidates(logits, CANDIDATES)
            columns = torch.arange(logits.shape[1], device=logits.device)
            logits = logits.masked_fill(columns >= self.top_k, float("-inf"))
        elif self.k_max:
            logits = logits.masked_fill(logits < kth_largest(logits, self.top_k, self.k_max), float("-inf"))
        logits = logits / torch.where(self.greedy, 1.0, self.temperature)
        if self.all_top_p and ids is None:  # when every nucleus is among the candidates, race there
            logits, ids = nucleus_columns(logits, self.top_p)
        elif self.all_top_p:
            logits = nucleus(logits, self.top_p)
        elif self.uses_top_p:  # its sort costs a row's worth each: only the rows that ask for it
            rows = self.top_p_rows
            logits = logits.index_copy(0, rows, nucleus(logits[rows], self.top_p[rows]))
        return logits, ids

    def choose(self, scores: torch.Tensor, noise: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Each row's column (B, 1) of `distribution`'s scores: the likeliest for a greedy row, else
        the winner of the race against `noise` (unread when greedy). Noise is drawn per column of
        the race, or, when it spans the vocabulary, per token: then the candidates `ids` read theirs,
        and the race has the winner it would have over the whole vocabulary."""
        if self.all_greedy:
            return row_argmax(scores)
        noise = noise.gather(1, ids) if ids is not None and not self.candidates else noise[:, :scores.shape[1]]
        return row_argmax(torch.where(self.greedy, scores, scores - noise.log()))

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Each row's next token (B, 1)."""
        scores, ids = self.distribution(logits, seen)
        column = self.choose(scores, noise, ids)
        return column if ids is None else ids.gather(1, column)


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
    sampler = Sampler.alike(batch, ids.device, temperature, top_k, top_p, repetition_penalty)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    noise = torch.empty(batch, sampler.width(vocab), device=ids.device)
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
