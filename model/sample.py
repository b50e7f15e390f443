"""Sampling text from a GPT with a KV cache: temperature, top-k, top-p, repetition penalty,
stopping at <|endoftext|>, deterministic for a seed, streaming tokens as they come."""
from __future__ import annotations

from collections.abc import Callable

import torch

from model.bpe import EOT, gpt2_encoding


def next_token_distribution(logits: torch.Tensor, ids: torch.Tensor, temperature: float, top_k: int | None,
                            top_p: float | None, repetition_penalty: float) -> torch.Tensor:
    """Probabilities of the next token, (B, V), from the last position's logits."""
    if repetition_penalty != 1.0:
        # CTRL's penalty: tokens already in the sequence become less likely, whatever their sign
        seen = torch.gather(logits, 1, ids)
        logits = logits.scatter(1, ids, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
             generator: torch.Generator | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None, compile: bool = False) -> torch.Tensor:
    """Extend (B, T) token ids by up to `max_new_tokens`, stopping once every row emitted <|endoftext|>.

    `temperature=0` is greedy. When the context fills up, the cache is rebuilt from its last half.
    `compile=True` decodes with a fixed-shape cache under torch.compile (CUDA graphs on a GPU),
    because one decode step is too small to keep a GPU busy launch by launch.
    """
    model.eval()
    block = model.config.block_size
    step = torch.compile(model, mode="reduce-overhead", fullgraph=True) if compile else model

    def prefill(context: torch.Tensor):
        cache = model.new_cache(context.shape[0])
        logits = model(context, cache)[:, -1, :].float()
        if compile:
            cache.make_static()
        return cache, logits, context.shape[1]

    cache, logits, length = prefill(ids[:, -block:])
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = next_token_distribution(logits, ids, temperature, top_k, top_p, repetition_penalty)
            nxt = torch.multinomial(probs, 1, generator=generator)
        nxt = nxt.masked_fill(done[:, None], EOT)  # finished rows only pad
        ids = torch.cat([ids, nxt], dim=1)
        if on_token is not None:
            on_token(nxt)
        done |= nxt.squeeze(1) == EOT
        if done.all():
            break
        if length == block:
            cache, logits, length = prefill(ids[:, -block // 2:])
        else:
            logits, length = step(nxt, cache)[:, -1, :].float(), length + 1
    return ids


def sample_text(model: torch.nn.Module, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                top_k: int | None = 40, seed: int = 0, top_p: float | None = None, repetition_penalty: float = 1.0,
                stream: Callable[[str], None] | None = None, compile: bool = False) -> str:
    """The prompt followed by one sampled continuation, cut at <|endoftext|>. `stream`, when given,
    receives the prompt and then each piece of text as it is generated."""
    enc = gpt2_encoding()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([enc.encode_ordinary(prompt)], device=device)
    pending: list[int] = []

    def emit(token: torch.Tensor) -> None:
        # a character can span several byte-level tokens: emit once the bytes decode cleanly
        if token.item() == EOT:
            return
        pending.append(token.item())
        try:
            text = enc.decode_bytes(pending).decode("utf-8")
        except UnicodeDecodeError:
            return  # wait for the rest of the character
        stream(text)
        pending.clear()

    if stream:
        stream(prompt)
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, generator,
                   emit if stream else None, compile)[0].tolist()
    new = out[ids.shape[1]:]
    if EOT in new:
        new = new[: new.index(EOT)]
    return prompt + enc.decode(new)
