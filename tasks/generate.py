"""Generation stage: sample a continuation of a prompt from a checkpoint."""
from __future__ import annotations

from typing import Any

from prefect import task

from model.lit import load_gpt
from model.sample import sample_text


@task(name="generate")
def generate_task(checkpoint: str, cfg: dict[str, Any]) -> str:
    """The prompt in `cfg` followed by a sampled continuation."""
    return sample_text(load_gpt(checkpoint), cfg["prompt"], cfg["max_new_tokens"], cfg["temperature"],
                       cfg["top_k"], cfg["seed"])
