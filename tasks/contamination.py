"""Train/test overlap as in the GPT-2 paper (section 4): word 8-grams of the training corpus in a
Bloom filter, and the share of each evaluation set's 8-grams found in it."""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash
from prefect import task
from rbloom import Bloom

from tasks.caching import FilesAndCode
from tasks.document import Document, read_documents, write_documents


def _stable_hash(item: str) -> int:
    # rbloom needs a hash that is the same in every process (Python's own str hash is salted)
    return xxhash.xxh3_64_intdigest(item.encode()) - 2**63


def ngrams(text: str, n: int = 8) -> list[str]:
    """Lower-cased alphanumeric word n-grams, as the paper normalised them."""
    words = re.findall(r"\w+", text.lower())
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def ngram_filter(texts: Iterable[str], expected: int, n: int = 8, false_positive_rate: float = 1e-8) -> Bloom:
    """A Bloom filter of every n-gram of `texts`."""
    bloom = Bloom(max(expected, 1), false_positive_rate, _stable_hash)
    for text in texts:
        bloom.update(ngrams(text, n))
    return bloom


def overlap(bloom: Bloom, text: str, n: int = 8) -> float:
    """Share of a text's n-grams found in the filter (0 for a text shorter than n words)."""
    grams = ngrams(text, n)
    return sum(g in bloom for g in grams) / len(grams) if grams else 0.0


def drop_contaminated(docs: Iterable[Document], eval_filter: Bloom, max_overlap: float,
                      stats: dict[str, int]) -> Iterator[Document]:
    """Training documents whose share of 8-grams found in the evaluation sets is at most `max_overlap`."""
    for doc in docs:
        if overlap(eval_filter, doc.text) > max_overlap:
            stats["contamination/dropped"] = stats.get("contamination/dropped", 0) + 1
        else:
            yield doc


@task(name="decontaminate", cache_policy=FilesAndCode(files=("docs_path",)))
def decontaminate_task(docs_path: str, out: str, eval_cfg: dict[str, Any], max_overlap: float) -> dict[str, Any]:
    """Drop the training documents of `docs_path` that share more than `max_overlap` of their
    8-grams with the evaluation sets found under `eval_cfg.benchmarks_dir`."""
    from tasks.evaluate import available_benchmarks, benchmark_text

    texts = [benchmark_text(b) for b in available_benchmarks(eval_cfg)]
    eval_filter = ngram_filter(texts, expected=sum(len(t.split()) for t in texts))
    stats: dict[str, int] = {}
    write_documents(Path(out), drop_contaminated(read_documents(Path(docs_path)), eval_filter, max_overlap, stats))
    return {"path": out, "stats": stats}
