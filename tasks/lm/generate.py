"""Generation stage: sample continuations of a prompt from a checkpoint, streaming them to stdout."""
from __future__ import annotations

import sys
from typing import Any

from prefect import task

from model.checkpoint import compiled_decoding, load_gpt
from model.sample import sample_text


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def generate_samples(checkpoint: str, cfg: dict[str, Any], stream: bool = True) -> list[str]:
    """`num_samples` continuations of `prompt`: sample i uses seed `seed + i`, so each is reproducible."""
    model = load_gpt(checkpoint, cfg["device"], cfg["dtype"])
    compile = compiled_decoding(cfg["compile_decode"], next(model.parameters()).device)
    samples = []
    for i in range(cfg["num_samples"]):
        if stream:
            write_now(f"\n--- sample {i + 1}/{cfg['num_samples']} (seed {cfg['seed'] + i}) ---\n")
        samples.append(sample_text(model, cfg["prompt"], cfg["max_new_tokens"], cfg["temperature"], cfg["top_k"],
                                   cfg["seed"] + i, cfg["top_p"], cfg["repetition_penalty"],
                                   write_now if stream else None, compile))
    if stream:
        write_now("\n")
    return samples


@task(name="generate")
def generate_task(checkpoint: str, cfg: dict[str, Any]) -> list[str]:
    """The prompt in `cfg` followed by sampled continuations."""
    return generate_samples(checkpoint, cfg)
