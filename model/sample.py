"""Sampling text from a GPT: temperature and top-k, deterministic for a seed."""
from __future__ import annotations

import torch

from tasks.tokenize import EOT, gpt2_encoding


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend (B, T) token ids by up to `max_new_tokens`, stopping once every row emitted <|endoftext|>."""
    model.eval()
    block_size = model.config.block_size
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block_size:])[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
        done |= nxt.squeeze(1) == EOT
        if done.all():
            break
    return ids


def sample_text(model: torch.nn.Module, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                top_k: int | None = 40, seed: int = 0) -> str:
    """The prompt followed by one sampled continuation, cut at <|endoftext|>."""
    enc = gpt2_encoding()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([enc.encode_ordinary(prompt)], device=device)
    out = generate(model, ids, max_new_tokens, temperature, top_k, generator)[0].tolist()
    new = out[ids.shape[1]:]
    if EOT in new:
        new = new[: new.index(EOT)]
    return prompt + enc.decode(new)
