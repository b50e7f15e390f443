"""Zero-shot perplexity with a sliding window, as in HF's guide to fixed-length models."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, context: int = 1024, stride: int = 512) -> float:
    """Perplexity of a 1-D token sequence: every token after the first is scored exactly once,
    with up to `context` tokens of context, the window advancing `stride` tokens at a time."""
    model.eval()
    device = next(model.parameters()).device
    n = ids.numel()
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        window = ids[begin:end].to(device).unsqueeze(0)
        new = end - prev_end  # tokens not scored by an earlier window
        logits = model(window)[0, :-1].float()
        targets = window[0, 1:]
        first = max(0, targets.numel() - new) if begin else 0
        nll += F.cross_entropy(logits[first:], targets[first:], reduction="sum").item()
        scored += targets.numel() - first
        prev_end = end
        if end == n:
            break
    return math.exp(nll / scored)
