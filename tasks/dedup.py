"""Stage 5, dedup: drop near-duplicates with MinHash LSH over word 5-grams (Jaccard > 0.5)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash
from datasketch import MinHash, MinHashLSH
from prefect import task

from tasks.caching import FilesAndCode
from tasks.document import Document, read_documents, write_documents


def shingles(text: str, n: int) -> set[bytes]:
    """The set of word n-grams of a text, lower-cased, as UTF-8 bytes."""
    words = text.lower().split()
    return {" ".join(words[i:i + n]).encode() for i in range(max(1, len(words) - n + 1))}


def _xxhash32(data: bytes) -> int:
    return xxhash.xxh32_intdigest(data)


def near_duplicates(docs: Iterable[tuple[str, str]], threshold: float = 0.5, num_perm: int = 128,
                    ngram: int = 5) -> list[str]:
    """Ids of the documents that near-duplicate an earlier one; the first occurrence is kept.

    `docs` is (id, text) in stream order.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dropped = []
    for doc_id, text in docs:
        sketch = MinHash.bulk([shingles(text, ngram)], num_perm=num_perm, hashfunc=_xxhash32)[0]
        if lsh.query(sketch):
            dropped.append(doc_id)
        else:
            lsh.insert(doc_id, sketch)
    return dropped


def drop_near_duplicates(docs: list[Document], cfg: dict[str, Any], stats: Counter) -> Iterator[Document]:
    """The documents that are not near-duplicates of an earlier one."""
    dropped = set(near_duplicates(((d.id, d.text) for d in docs), cfg["threshold"], cfg["num_perm"], cfg["ngram"]))
    stats["dedup/dropped"] += len(dropped)
    for doc in docs:
        if doc.id not in dropped:
            stats["dedup/kept"] += 1
            yield doc


@task(name="dedup", cache_policy=FilesAndCode(files=("docs_path",)))
def dedup_task(docs_path: str, out: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the documents of `docs_path` minus near-duplicates to `out`."""
    stats: Counter = Counter()
    docs = list(read_documents(Path(docs_path)))
    write_documents(Path(out), drop_near_duplicates(docs, cfg, stats))
    return {"path": out, "stats": dict(stats)}
