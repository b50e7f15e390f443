"""Evaluation stage: strided perplexity of a checkpoint on the corpus val split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import task

from model.data import load_split
from model.evaluate import perplexity
from model.lit import load_gpt
from tasks.caching import FilesAndCode


def val_perplexity(checkpoint: str, data_dir: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Perplexity on up to `cfg.max_tokens` tokens of the val split, per GPT-2 BPE token."""
    model = load_gpt(checkpoint)
    tokens = load_split(Path(data_dir), "val")[: cfg["max_tokens"]]
    ids = torch.from_numpy(tokens.astype("int64"))
    stride = cfg["stride"] or cfg["context"] // 2
    return {"val/perplexity": perplexity(model, ids, cfg["context"], stride), "val/tokens": float(ids.numel())}


@task(name="evaluate", cache_policy=FilesAndCode(files=("checkpoint", "data_dir")))
def evaluate_task(checkpoint: str, data_dir: str, cfg: dict[str, Any]) -> dict[str, float]:
    return val_perplexity(checkpoint, data_dir, cfg)
