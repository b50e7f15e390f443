"""A near-duplicate benchmark built from real articles: edited, reordered, truncated and padded copies,
labelled by exact 5-gram Jaccard, plus the plain datasketch loop that serves as the speed anchor."""
from __future__ import annotations

import random
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH

from tasks.corpus.neardup import jaccard, shingle_hashes

BOILERPLATE = ("Subscribe to our newsletter for the latest stories, delivered every morning. We use cookies to "
               "improve your experience; by continuing you accept our privacy policy and terms of use. "
               "Follow us on social media, share this story with a friend, and read more from our archive. ")


def edit_words(words: list[str], fraction: float, rng: random.Random) -> list[str]:
    words = list(words)
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = rng.choice(["the", "a", "new", "local", "report", "said", "today", "people"])
    return words


def variants(text: str, rng: random.Random) -> list[str]:
    """Copies of an article that a web crawl sees: light and heavy edits, reordered paragraphs,
    truncations, and boilerplate added around it."""
    words, paragraphs = text.split(), [p for p in text.split("\n") if p.strip()]
    shuffled = paragraphs[:]
    rng.shuffle(shuffled)
    out = [" ".join(edit_words(words, f, rng)) for f in (0.01, 0.03, 0.06, 0.1, 0.15)]
    out += ["\n".join(shuffled)]
    out += [" ".join(words[: int(len(words) * f)]) for f in (0.9, 0.7, 0.55, 0.45, 0.3)]
    out += [BOILERPLATE * k + text + " " + BOILERPLATE * k for k in (1, 3, 8)]
    return out


def benchmark_stream(texts: Iterable[str], seed: int = 0) -> list[tuple[str, str]]:
    """(id, text) for every article and its variants, in a shuffled order."""
    rng = random.Random(seed)
    docs = []
    for i, text in enumerate(texts):
        docs.append((f"{i}", text))
        docs += [(f"{i}.{j}", v) for j, v in enumerate(variants(text, rng))]
    rng.shuffle(docs)
    return docs


def exact_duplicates(docs: list[tuple[str, str]], threshold: float = 0.5, ngram: int = 5) -> set[str]:
    """The ids a perfect deduplicator drops: exact Jaccard > threshold with an earlier kept document."""
    kept, dropped = [], set()
    for doc_id, text in docs:
        grams = shingle_hashes(text, ngram)
        if any(jaccard(grams, k) > threshold for k in kept):
            dropped.add(doc_id)
        else:
            kept.append(grams)
    return dropped


def datasketch_loop(docs: Iterable[tuple[str, str]], threshold: float = 0.5, num_perm: int = 128) -> list[str]:
    """The anchor: the textbook datasketch loop, MinHash.update_batch on 5-gram bytes + MinHashLSH."""
    lsh, dropped = MinHashLSH(threshold=threshold, num_perm=num_perm), []
    for doc_id, text in docs:
        words = text.lower().split()
        grams = {" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))}
        sketch = MinHash(num_perm=num_perm)
        sketch.update_batch(grams)
        if lsh.query(sketch):
            dropped.append(doc_id)
        else:
            lsh.insert(doc_id, sketch)
    return dropped


def precision_recall(predicted: set[str], truth: set[str]) -> tuple[float, float]:
    hits = len(predicted & truth)
    return hits / len(predicted) if predicted else 1.0, hits / len(truth) if truth else 1.0
