"""Evaluation stage: perplexity on the corpus val split, the GPT-2 paper's zero-shot benchmarks,
and their overlap with the training corpus."""
from __future__ import annotations

from typing import Any

import torch
from prefect import task

from model.benchmarks import Benchmark, available_benchmarks, benchmark_text, score
from model.data import ShardCache, TokenShards
from model.evaluate import perplexity
from model.checkpoint import load_gpt
from model.manifest import Manifest
from tasks.caching import FilesAndCode
from tasks.corpus.contamination import ngram_filter, overlap
from tasks.corpus.document import corpus_documents


def val_perplexity(model: torch.nn.Module, data_dir: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Perplexity on up to `cfg.max_tokens` tokens of the val split, per GPT-2 BPE token."""
    tokens = TokenShards(data_dir, "val", ShardCache(cfg["cache_dir"], int(cfg["cache_gb"] * 2**30)))[: cfg["max_tokens"]]
    ids = torch.from_numpy(tokens.astype("int64"))
    return {"eval/perplexity_strided": perplexity(model, ids, cfg["context"], stride(cfg)), "eval/tokens": float(ids.numel())}


def stride(cfg: dict[str, Any]) -> int:
    return cfg["stride"] or cfg["context"] // 2


def contamination(data_dir: str, benchmarks: list[Benchmark]) -> dict[str, float]:
    """Percent of each benchmark's 8-grams that occur in the training documents."""
    tokens = Manifest.read(data_dir).stats.get("tokenize/tokens", 0)
    bloom = ngram_filter((d.text for d in corpus_documents(data_dir)), expected=tokens)  # words < tokens
    return {b.name: 100 * overlap(bloom, benchmark_text(b)) for b in benchmarks}


@task(name="evaluate", cache_policy=FilesAndCode(files=("checkpoint", "data_dir")))
def evaluate_task(checkpoint: str, data_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Val perplexity, then every available benchmark with its contamination."""
    model = load_gpt(checkpoint, cfg["device"], cfg["dtype"])
    benchmarks = available_benchmarks(cfg)
    return {"val": val_perplexity(model, data_dir, cfg),
            "benchmarks": {b.name: score(model, b, cfg["context"], stride(cfg)) for b in benchmarks},
            "contamination": contamination(data_dir, benchmarks) if benchmarks else {}}
