"""Evaluation stage: perplexity on the corpus val split, the GPT-2 paper's zero-shot benchmarks,
and their overlap with the training corpus."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from prefect import task

from model.benchmarks import LOADERS, Benchmark, score
from model.data import load_split
from model.evaluate import perplexity
from model.lit import load_gpt
from tasks.caching import FilesAndCode
from tasks.contamination import ngram_filter, overlap
from tasks.document import read_documents

log = logging.getLogger(__name__)


def val_perplexity(model: torch.nn.Module, data_dir: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Perplexity on up to `cfg.max_tokens` tokens of the val split, per GPT-2 BPE token."""
    tokens = load_split(Path(data_dir), "val")[: cfg["max_tokens"]]
    ids = torch.from_numpy(tokens.astype("int64"))
    return {"val/perplexity": perplexity(model, ids, cfg["context"], stride(cfg)), "val/tokens": float(ids.numel())}


def stride(cfg: dict[str, Any]) -> int:
    return cfg["stride"] or cfg["context"] // 2


def available_benchmarks(cfg: dict[str, Any]) -> list[Benchmark]:
    """The benchmarks whose files are under `cfg.benchmarks_dir`; the missing ones are logged and skipped."""
    if not cfg["benchmarks_dir"]:
        return []
    found = []
    for name, relative in cfg["benchmarks"].items():
        path = Path(cfg["benchmarks_dir"]) / relative
        if path.exists():
            found.append(LOADERS[name](path))
        else:
            log.warning("benchmark %s skipped: %s not found", name, path)
    return found


def benchmark_text(bench: Benchmark) -> str:
    """All the text of a benchmark: its body, or its examples' contexts and targets."""
    return bench.text or "\n".join(" ".join(map(str, example[:2])) for example in bench.examples)


def contamination(data_dir: str, benchmarks: list[Benchmark]) -> dict[str, float]:
    """Percent of each benchmark's 8-grams that occur in the training documents."""
    docs = [d.text for d in read_documents(Path(data_dir) / "documents.jsonl.zst")]
    bloom = ngram_filter(docs, expected=sum(len(t.split()) for t in docs))
    return {b.name: 100 * overlap(bloom, benchmark_text(b)) for b in benchmarks}


@task(name="evaluate", cache_policy=FilesAndCode(files=("checkpoint", "data_dir")))
def evaluate_task(checkpoint: str, data_dir: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Val perplexity, then every available benchmark with its contamination."""
    model = load_gpt(checkpoint, cfg["device"], cfg["dtype"])
    benchmarks = available_benchmarks(cfg)
    return {"val": val_perplexity(model, data_dir, cfg),
            "benchmarks": {b.name: score(model, b, cfg["context"], stride(cfg)) for b in benchmarks},
            "contamination": contamination(data_dir, benchmarks) if benchmarks else {}}
