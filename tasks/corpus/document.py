"""The record every corpus stage passes along, and its jsonl.zst storage."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from model.manifest import FILE, Manifest
from tasks import storage


@dataclass
class Document:
    """One web page on its way from a Reddit submission to token ids; each stage fills its own fields."""

    id: str
    url: str
    title: str = ""
    subreddit: str = ""
    created_utc: int = 0
    text: str = ""
    lang: str = ""
    lang_prob: float = 0.0
    n_tokens: int = 0
    origin: str = ""    # where the page came from: live, a Common Crawl crawl id, or wayback:TIMESTAMP
    captured: str = ""  # when that page was captured (ISO 8601)
    html: str = field(default="", repr=False)  # the fetched page, only until extraction; never stored


def url_id(url: str) -> str:
    """Stable document id: the first 16 hex digits of the normalised URL's SHA-256."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def write_documents(path: Path, docs: Iterable[Document]) -> int:
    """Write documents as zstd-compressed JSON lines, atomically; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    # zstd's default level: level 10's tables hold tens of MiB more in every process writing a shard,
    # for files only somewhat smaller
    with open(tmp, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zst:
        for doc in docs:
            record = dataclasses.asdict(doc)
            del record["html"]
            zst.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            n += 1
    tmp.replace(path)
    return n


def read_documents(path: str | Path) -> Iterator[Document]:
    """Stream the documents of a jsonl.zst file written by `write_documents` (a path or a store URL)."""
    with storage.open_file(path) as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zst:
        for line in io.TextIOWrapper(zst, encoding="utf-8"):
            yield Document(**json.loads(line))


def corpus_documents(tokens_dir: str | Path) -> Iterator[Document]:
    """Stream every kept document of a built corpus, shard after shard, as its manifest lists them."""
    manifest = Manifest.from_json(storage.read_text(storage.join(tokens_dir, FILE)))
    for kept in manifest.kept:
        yield from read_documents(storage.join(tokens_dir, kept["docs"]))
