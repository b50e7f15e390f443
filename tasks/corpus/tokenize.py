"""Step tokenize: GPT-2 BPE ids (identical to tiktoken's "gpt2") in uint16 shards, split train/val."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from model.bpe import EOT, gpt2_encoding
from tasks.corpus.document import Document

def is_val(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: the same document always lands in the same split."""
    return int(doc_id[:8], 16) / 16**8 < val_fraction


def tokenize_documents(docs: Iterable[Document], min_tokens: int, stats: Counter) -> Iterator[tuple[Document, list[int]]]:
    """(document, ids) for documents of at least `min_tokens` tokens. One document at a time, on the
    calling thread: a corpus worker has one core, and tiktoken's batch call would start eight threads
    and hold a batch's ids (~30 KB a document as Python lists)."""
    enc = gpt2_encoding()
    for doc in docs:
        ids = enc.encode_ordinary(doc.text)
        doc.n_tokens = len(ids)
        if len(ids) < min_tokens:
            stats["tokenize/dropped_short"] += 1
            continue
        stats["tokenize/kept"] += 1
        stats["tokenize/tokens"] += len(ids)
        yield doc, ids


class ShardWriter:
    """Appends documents (ids + EOT) to uint16 `.bin` files named `<prefix>_NNNNN.bin`, each with an
    `.idx.npy` of document offsets, starting a new file every `shard_tokens` tokens. Ids go to the
    open file as they come: memory holds one document's ids and the offsets, whatever the shard size."""

    def __init__(self, out_dir: Path, prefix: str, shard_tokens: int):
        self.out_dir, self.prefix, self.shard_tokens = out_dir, prefix, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.file: BinaryIO | None = None
        self.offsets: list[int] = [0]

    def add(self, ids: list[int]) -> None:
        if self.file is None:
            self.file = open(self.out_dir / f"{self.name()}.bin", "wb")
        np.asarray(ids + [EOT], dtype=np.uint16).tofile(self.file)
        self.offsets.append(self.offsets[-1] + len(ids) + 1)
        if self.offsets[-1] >= self.shard_tokens:
            self.flush()

    def flush(self) -> list[dict[str, Any]]:
        """Close the open file as a finished shard, with its offsets; returns every shard written so far."""
        if self.file is not None:
            self.file.close()
            self.file = None
            np.save(self.out_dir / f"{self.name()}.idx.npy", np.array(self.offsets, dtype=np.int64))
            self.shards.append({"bin": f"{self.name()}.bin", "docs": len(self.offsets) - 1, "tokens": self.offsets[-1]})
            self.offsets = [0]
        return self.shards

    def name(self) -> str:
        """The open (or next) file's name, without its extension."""
        return f"{self.prefix}_{len(self.shards):05d}"


def route_to_shards(tokenized: Iterable[tuple[Document, list[int]]], writers: dict[str, ShardWriter],
                    val_fraction: float) -> Iterator[Document]:
    """Append each document's ids to its split's shards and pass the document on."""
    for doc, ids in tokenized:
        writers["val" if is_val(doc.id, val_fraction) else "train"].add(ids)
        yield doc
