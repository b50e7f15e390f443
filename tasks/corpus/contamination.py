"""Step decontaminate, and train/test overlap as in the GPT-2 paper (section 4): word 8-grams of the
training corpus in a Bloom filter, and the share of each evaluation set's 8-grams found in it."""
from __future__ import annotations

import re
from collections.abc import Iterable

import xxhash
from rbloom import Bloom

from model.benchmarks import available_benchmarks, benchmark_text
from tasks.corpus.document import Document
from tasks.corpus.step import Step


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


class Decontaminate(Step):
    """Drop training documents that share more than `max_overlap` of their 8-grams with the evaluation
    sets found under `benchmarks_dir` (the GPT-2 paper's Table 3 files)."""

    name, label = "decontaminate", "decontaminated"

    def __init__(self, benchmarks_dir: str | None, benchmarks: dict[str, str], max_overlap: float = 0.1):
        super().__init__()
        self.max_overlap = max_overlap
        texts = [benchmark_text(b) for b in available_benchmarks({"benchmarks_dir": benchmarks_dir,
                                                                 "benchmarks": benchmarks})]
        self.eval_filter = ngram_filter(texts, expected=sum(len(t.split()) for t in texts))

    def reject(self, doc: Document) -> str | None:
        return "overlaps_eval" if overlap(self.eval_filter, doc.text) > self.max_overlap else None
