"""The sharded corpus: one chain of per-document steps per shard, the near-dup phases, then the
filter-and-tokenize pass per shard.

Every shard writes its own files under its folder and, last, a done marker holding its counters and
the fingerprint of its inputs, settings and code; a rerun after a kill reuses every shard whose
marker matches and redoes the others, so nothing is lost or written twice.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import TypedDict  # the one pydantic reads on Python 3.11 (done markers)

from tasks import storage
from tasks.storage import StoreError
from tasks.corpus.archive_index import write_wanted
from tasks.corpus.document import Document, read_documents, url_id, write_documents
from tasks.corpus.neardup import Source, band_hashes, band_table, keep_positions
from tasks.corpus.step import Step, build_steps, check_errors, run_steps
from tasks.corpus.tokenize import ShardWriter, route_to_shards, tokenize_documents
from tasks.corpus.warc import warc_records

log = logging.getLogger(__name__)
WANTED = "wanted.parquet"  # a shard's URLs whose live page gave no article text


@dataclass(frozen=True)
class ShardPlan:
    """One shard of pages: the records of `warc` that start in [start, end) (end None: to the file's
    end) and, for fetched pages, the URL stage's documents (`urls`), which give the corpus order."""

    id: str
    warc: str
    start: int = 0
    end: int | None = None
    urls: str | None = None
    want_archive: bool = False  # list the URLs whose page gave no article text, for the web archives


class ShardResult(TypedDict):
    """What the per-document steps leave of one shard: its documents for dedup, its counters, and
    (with `want_archive`) the file of URLs the web archives are asked for."""

    source: Source
    stats: dict[str, int]
    wanted: str | None


def plan_warc_shards(warc_files: list[str], shard_bytes: int) -> list[ShardPlan]:
    """Cut WARC files into shards by byte ranges of about `shard_bytes`: a record belongs to the
    shard in which it starts, so every record is read by exactly one shard."""
    shards = []
    for path in warc_files:
        size = storage.size(path)
        parts = max(1, math.ceil(size / shard_bytes))
        for k in range(parts):
            end = None if k == parts - 1 else (k + 1) * shard_bytes
            shards.append(ShardPlan(f"{len(shards):05d}", str(path), k * shard_bytes, end))
    return shards


class Progress:
    """Logs a shard's documents/s and, when its size is known, its ETA, every `every_s` seconds."""

    def __init__(self, name: str, total: int | None = None, every_s: float = 15.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, fraction: float | None = None) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last, rate = now, self.done / (now - self.start)
        fraction = fraction if fraction is not None else (self.done / self.total if self.total else None)
        eta = f", ETA {(now - self.start) * (1 / fraction - 1):.0f} s" if fraction else ""
        log.info("shard %s: %d pages, %.1f pages/s%s", self.name, self.done, rate, eta)

    def finish(self) -> None:
        elapsed = time.monotonic() - self.start
        log.info("shard %s: %d pages in %.1f s (%.1f pages/s)", self.name, self.done, elapsed,
                 self.done / max(elapsed, 1e-9))


def shard_pages(shard: ShardPlan, stats: Counter) -> Iterator[Document]:
    """The shard's pages as documents carrying their HTML: with the URL stage's documents when the
    pages were fetched, or new documents for each URL when the WARC files came from elsewhere. A
    damaged WARC keeps the pages before the damage (`warc/damaged_file`); a StoreError (the store
    or disk failed after every retry) fails the shard instead."""
    by_url = {d.url: d for d in read_documents(shard.urls)} if shard.urls else None
    span = (shard.end or storage.size(shard.warc)) - shard.start
    progress = Progress(shard.id, len(by_url) if by_url is not None else None)
    try:
        for page in warc_records(shard.warc, shard.start, shard.end):
            progress.update(None if by_url is not None else (page.offset - shard.start) / max(span, 1))
            doc = Document(id=url_id(page.url), url=page.url) if by_url is None else by_url.pop(page.url, None)
            if doc is not None:
                doc.html, doc.origin, doc.captured = page.html, page.origin, page.captured
                yield doc
    except StoreError:  # the machine failed, not the file: the shard fails, no marker, and is redone
        raise
    except Exception as err:  # a damaged WARC keeps what was read before the damage
        stats["warc/damaged_file"] += 1
        log.warning("shard %s: %s is damaged after %d pages (%s: %s); kept those", shard.id,
                    shard.warc, progress.done, type(err).__name__, err)
    progress.finish()


def with_band_keys(docs: Iterator[Document], dedup: dict[str, Any], keys: list[np.ndarray]) -> Iterator[Document]:
    """Pass the documents on, appending each one's LSH band keys to `keys`."""
    for doc in docs:
        keys.append(band_hashes(doc.text, dedup["bands"], dedup["rows"], dedup["ngram"]))
        yield doc


def process_shard(shard: ShardPlan, out_dir: str, pipeline: dict[str, dict[str, Any]], dedup: dict[str, Any],
                  max_error_share: float) -> ShardResult:
    """Run the pipeline's steps over one shard's pages; write the kept documents and their LSH band
    keys. StepFailed when a step raised on more than `max_error_share` of its documents."""
    with storage.staged_folder(out_dir) as local:
        n, stats = write_shard(shard, local, build_steps(pipeline), dedup, max_error_share)
    return ShardResult(source=Source(storage.join(out_dir, "docs.jsonl.zst"), storage.join(out_dir, "bands.npy"), n),
                       stats=dict(stats), wanted=storage.join(out_dir, WANTED) if shard.want_archive else None)


def write_shard(shard: ShardPlan, out_dir: Path, steps: list[Step], dedup: dict[str, Any],
                max_error_share: float) -> tuple[int, Counter]:
    """`process_shard`'s work in a local folder: docs.jsonl.zst, bands.npy and, with `want_archive`,
    the URLs with no extracted page (`WANTED`); returns (documents, counters)."""
    stats: Counter = Counter()
    bands: list[np.ndarray] = []
    extracted: set[str] = set()
    docs = run_steps(shard_pages(shard, stats), steps, stats, {"extract": lambda doc: extracted.add(doc.url)})
    if shard.urls:  # pages arrive in fetch-completion order; corpus order is the dump's (text only: small)
        order = {d.url: i for i, d in enumerate(read_documents(shard.urls))}
        docs = iter(sorted(docs, key=lambda d: order[d.url]))
    n = write_documents(out_dir / "docs.jsonl.zst", with_band_keys(docs, dedup, bands))
    check_errors(stats, steps, max_error_share, f"shard {shard.id}")  # before the done marker
    if shard.want_archive:
        write_wanted(shard.urls, str(out_dir / WANTED), frozenset(extracted))
    np.save(out_dir / "bands.npy", band_table(np.array(bands, dtype=np.uint64).reshape(n, dedup["bands"])))
    return n, stats


def finish_shard(source: Source, drop: list[int], tokens_dir: str | Path, shard_id: str,
                 tokenize: dict[str, Any]) -> dict[str, Any]:
    """Drop the shard's near-duplicates, tokenize the rest into its own token files, and keep the
    surviving documents with their band keys (what a later refresh dedups against)."""
    with storage.staged_folder(tokens_dir) as local:
        return write_tokens(source, drop, local, shard_id, tokenize)


def write_tokens(source: Source, drop: list[int], tokens_dir: Path, shard_id: str,
                 tokenize: dict[str, Any]) -> dict[str, Any]:
    """`finish_shard`'s work in a local folder."""
    stats: Counter = Counter()
    gone = set(drop)
    in_flight: deque[tuple[int, Document]] = deque()  # (position, document) between reading and writing

    def survivors() -> Iterator[Document]:
        for i, doc in enumerate(read_documents(source.docs)):
            stats["dedup/dropped" if i in gone else "dedup/kept"] += 1
            if i not in gone:
                in_flight.append((i, doc))
                yield doc

    rows: list[int] = []

    def positions_of_kept(docs: Iterator[Document]) -> Iterator[Document]:
        """Note each written document's position in the shard; those in between were too short."""
        for doc in docs:
            while in_flight[0][1] is not doc:
                in_flight.popleft()
            rows.append(in_flight.popleft()[0])
            yield doc

    writers = {split: ShardWriter(tokens_dir, f"{split}-{shard_id}", tokenize["shard_tokens"])
               for split in ("train", "val")}
    tokenized = tokenize_documents(survivors(), tokenize["min_tokens"], stats)
    routed = route_to_shards(tokenized, writers, tokenize["val_fraction"])
    docs_path, bands_path = tokens_dir / f"docs-{shard_id}.jsonl.zst", tokens_dir / f"bands-{shard_id}.npy"
    n = write_documents(docs_path, positions_of_kept(routed))
    np.save(bands_path, keep_positions(storage.load_npy(source.bands), rows))  # the keys computed in process_shard
    return {"splits": {split: w.flush() for split, w in writers.items()},
            "kept": {"docs": docs_path.name, "bands": bands_path.name, "n": n}, "stats": dict(stats)}
