"""Stage 5, dedup: drop near-duplicates with MinHash LSH over word 5-grams, verified by exact Jaccard.

MinHash LSH (datasketch) finds candidates at a threshold below the decision threshold, so that
almost no true near-duplicate escapes; each candidate is then checked against the exact Jaccard
of the 5-gram sets, so that nothing is dropped on an estimate. The index, with the 5-gram sets
of the kept documents, can live on disk or in Redis, so that later runs dedup against it.
"""
from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import redis

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH
from prefect import task
from tqdm import tqdm

from tasks.caching import FilesAndCode
from tasks.document import Document, read_documents, write_documents

GRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant that mixes word hashes into n-gram hashes


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """The sorted, unique 64-bit hashes of a text's lower-cased word n-grams (one gram if it is shorter)."""
    words = text.lower().encode().split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    word_hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, words), dtype=np.uint64, count=len(words))
    m = max(1, len(words) - n + 1)
    grams = word_hashes[:m].copy()
    for k in range(1, min(n, len(words))):  # wrapping uint64 arithmetic, as intended
        grams = grams * GRAM_MIX ^ word_hashes[k:k + m]
    grams *= GRAM_MIX
    grams ^= grams >> np.uint64(31)
    grams.sort()
    return grams[np.concatenate(([True], grams[1:] != grams[:-1]))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if a.size > b.size:
        a, b = b, a
    found = np.searchsorted(b, a)
    common = int(np.count_nonzero(b[np.minimum(found, b.size - 1)] == a)) if b.size else 0
    return common / (a.size + b.size - common) if a.size + b.size else 1.0


class RedisGrams:
    """The kept documents' n-gram sets in a Redis hash, shared by every worker of one index."""

    def __init__(self, client: redis.Redis, name: str):
        self.client, self.name = client, f"{name}:grams"

    def __contains__(self, doc_id: str) -> bool:
        return bool(self.client.hexists(self.name, doc_id))

    def __getitem__(self, doc_id: str) -> np.ndarray:
        return np.frombuffer(self.client.hget(self.name, doc_id), dtype=np.uint64)

    def __setitem__(self, doc_id: str, grams: np.ndarray) -> None:
        self.client.hset(self.name, doc_id, grams.tobytes())


class NearDuplicateIndex:
    """Kept documents' MinHash sketches in an LSH index plus their exact 5-gram sets for verification.

    In memory (and pickled to disk between runs) by default; with `redis` settings the LSH
    buckets and the n-gram sets live in Redis, and a Redis lock makes check-then-insert atomic,
    so that concurrent workers never both keep the two halves of a near-duplicate pair.
    """

    def __init__(self, threshold: float = 0.5, bands: int = 20, rows: int = 2, ngram: int = 5,
                 redis_settings: dict[str, Any] | None = None):
        self.threshold, self.ngram, self.num_perm = threshold, ngram, bands * rows
        # A candidate needs `rows` equal sketch values in one of `bands` bands: with 20 x 2, a pair
        # at Jaccard 0.5 becomes a candidate with probability 1 - (1 - 0.5^2)^20 = 0.997, at 0.6 0.9999.
        storage = None
        self.grams: dict[str, np.ndarray] | RedisGrams = {}
        self.lock: AbstractContextManager = nullcontext()
        if redis_settings:
            name = redis_settings["name"]
            storage = {"type": "redis", "basename": name.encode(),
                       "redis": {k: redis_settings[k] for k in ("host", "port", "db")}}
            client = redis.Redis(**storage["redis"])
            self.grams = RedisGrams(client, name)
            self.lock = client.lock(f"{name}:lock", timeout=60, blocking_timeout=300)
        self.lsh = MinHashLSH(num_perm=self.num_perm, params=(bands, rows), storage_config=storage)
        # datasketch's MinHash only carries the values to the index here (its permutations are never
        # applied), so one instance is reused rather than validating new permutations per document
        self.carrier = MinHash(num_perm=self.num_perm)

    def sketch(self, grams: np.ndarray) -> MinHash:
        """A one-permutation MinHash of a sorted n-gram hash set, in O(n).

        The hashes are split into `num_perm` bins by their top bits; since they are sorted, the
        minimum of each bin is its first element. An empty bin borrows the next non-empty bin's
        minimum (rotation densification). Two sets agree in a bin about as often as their Jaccard.
        """
        if not grams.size:  # an empty document: the "empty set" sketch
            self.carrier.hashvalues = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
            return self.carrier
        k = np.uint64(self.num_perm)
        bins = ((grams >> np.uint64(32)) * k) >> np.uint64(32)
        first = np.searchsorted(bins, np.arange(self.num_perm, dtype=np.uint64))
        borrowed = (first == grams.size) | (bins[np.minimum(first, grams.size - 1)] != np.arange(self.num_perm))
        first[first == grams.size] = 0
        values = grams[first] ^ (borrowed * np.arange(1, self.num_perm + 1, dtype=np.uint64) * GRAM_MIX)
        self.carrier.hashvalues = (values & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        return self.carrier

    def duplicate_of(self, grams: np.ndarray, sketch: MinHash) -> str | None:
        """The id of a kept document whose exact Jaccard with `grams` is above the threshold, if any."""
        for key in self.lsh.query(sketch):
            if jaccard(grams, self.grams[key]) > self.threshold:
                return key
        return None

    def add_if_new(self, doc_id: str, text: str) -> bool:
        """Index the document unless it near-duplicates a kept one; True when it was kept."""
        grams = shingle_hashes(text, self.ngram)
        sketch = self.sketch(grams)
        with self.lock:
            if doc_id in self.grams:
                return True  # indexed by an earlier run: kept again, not dropped as its own duplicate
            if self.duplicate_of(grams, sketch) is not None:
                return False
            self.lsh.insert(doc_id, sketch, check_duplication=False)
            self.grams[doc_id] = grams
            return True

    def save(self, path: Path) -> None:
        """Write the index to `path` atomically (the embedded, on-disk backend; Redis keeps its own)."""
        if isinstance(self.grams, RedisGrams):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        tmp.replace(path)

    @classmethod
    def open(cls, cfg: dict[str, Any], path: Path | None = None) -> NearDuplicateIndex:
        """The index that `cfg` describes: in Redis, or the one saved at `path`, or a new one."""
        settings = {k: cfg[k] for k in ("threshold", "bands", "rows", "ngram")}
        if cfg["backend"] == "redis":
            return cls(**settings, redis_settings=cfg["redis"])
        if path is not None and path.exists():
            return pickle.loads(path.read_bytes())
        return cls(**settings)


def near_duplicates(docs: Iterable[tuple[str, str]], threshold: float = 0.5,
                    index: NearDuplicateIndex | None = None) -> list[str]:
    """Ids of the documents whose 5-gram Jaccard with an earlier kept one is above `threshold`;
    the first occurrence is kept. `docs` is (id, text) in stream order."""
    index = index or NearDuplicateIndex(threshold)
    return [doc_id for doc_id, text in docs if not index.add_if_new(doc_id, text)]


def drop_near_duplicates(docs: Iterable[Document], index: NearDuplicateIndex, stats: Counter) -> Iterator[Document]:
    """The documents that do not near-duplicate one already in the index."""
    for doc in docs:
        if index.add_if_new(doc.id, doc.text):
            stats["dedup/kept"] += 1
            yield doc
        else:
            stats["dedup/dropped"] += 1


@task(name="dedup", cache_policy=FilesAndCode(files=("docs_path",)))
def dedup_task(docs_path: str, out: str, cfg: dict[str, Any], index_path: str | None = None) -> dict[str, Any]:
    """Write the documents of `docs_path` minus near-duplicates to `out`; `index_path` persists the
    index between runs, so that later documents are checked against earlier ones too."""
    stats: Counter = Counter()
    index = NearDuplicateIndex.open(cfg, Path(index_path) if index_path else None)
    docs = tqdm(read_documents(Path(docs_path)), desc="dedup", unit="doc")
    write_documents(Path(out), drop_near_duplicates(docs, index, stats))
    if index_path:
        index.save(Path(index_path))
    return {"path": out, "stats": dict(stats)}
