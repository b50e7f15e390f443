"""Step tokenize: GPT-2 BPE ids (identical to tiktoken's "gpt2") in uint16 shards, split train/val."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model.bpe import EOT, gpt2_encoding
from tasks.corpus.document import Document

def is_val(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: the same document always lands in the same split."""
    return int(doc_id[:8], 16) / 16**8 < val_fraction


def tokenize_documents(docs: Iterable[Document], min_tokens: int, stats: Counter,
                       batch_size: int = 256) -> Iterator[tuple[Document, list[int]]]:
    """(document, ids) for documents of at least `min_tokens` tokens, encoded in batches (their ids
    as Python lists: ~30 KB a document, so a batch stays small)."""
    enc = gpt2_encoding()
    batch: list[Document] = []

    def flush() -> Iterator[tuple[Document, list[int]]]:
        for doc, ids in zip(batch, enc.encode_ordinary_batch([d.text for d in batch])):
            doc.n_tokens = len(ids)
            if len(ids) < min_tokens:
                stats["tokenize/dropped_short"] += 1
                continue
            stats["tokenize/kept"] += 1
            stats["tokenize/tokens"] += len(ids)
            yield doc, ids
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield from flush()
    yield from flush()


class ShardWriter:
    """Appends documents (ids + EOT) to uint16 `.bin` files named `<prefix>_NNNNN.bin`, each with an
    `.idx.npy` of document offsets, starting a new file every `shard_tokens` tokens."""

    def __init__(self, out_dir: Path, prefix: str, shard_tokens: int):
        self.out_dir, self.prefix, self.shard_tokens = out_dir, prefix, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.buffer: list[np.ndarray] = []
        self.n_buffered = 0

    def add(self, ids: list[int]) -> None:
        self.buffer.append(np.asarray(ids + [EOT], dtype=np.uint16))
        self.n_buffered += len(ids) + 1
        if self.n_buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> list[dict[str, Any]]:
        """Write what is buffered as one shard; returns every shard written so far."""
        if self.buffer:
            name = f"{self.prefix}_{len(self.shards):05d}"
            offsets = np.cumsum([0] + [len(a) for a in self.buffer], dtype=np.int64)
            np.concatenate(self.buffer).tofile(self.out_dir / f"{name}.bin")
            np.save(self.out_dir / f"{name}.idx.npy", offsets)
            self.shards.append({"bin": f"{name}.bin", "docs": len(self.buffer), "tokens": int(offsets[-1])})
            self.buffer, self.n_buffered = [], 0
        return self.shards


def route_to_shards(tokenized: Iterable[tuple[Document, list[int]]], writers: dict[str, ShardWriter],
                    val_fraction: float) -> Iterator[Document]:
    """Append each document's ids to its split's shards and pass the document on."""
    for doc, ids in tokenized:
        writers["val" if is_val(doc.id, val_fraction) else "train"].add(ids)
        yield doc
