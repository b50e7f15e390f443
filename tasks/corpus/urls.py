"""Stage urls: Reddit submissions from Pushshift dumps -> unique, normalised article URLs."""
from __future__ import annotations

import html
import io
import itertools
import json
import logging
import lzma
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import xxhash
import zstandard
from tqdm import tqdm

from tasks.corpus.document import Document, url_id, write_documents
from tasks.corpus.dumpfile import BadDump, dump_format, open_dump

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}


SUFFIX_FORMAT = {".zst": "zst", ".xz": "xz", ".bz2": "bz2", ".gz": "gz", ".json": "ndjson", ".ndjson": "ndjson"}


def read_submissions(paths: Iterable[Path], stats: Counter, skip_bad: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dump name, record) for each JSON record of the dumps. Corrupt lines, damaged frames and
    truncated files are counted (in total and per dump), logged and skipped, and every intact record
    is kept. A dump that cannot be read at all (missing, empty, not a dump, not one record) stops the
    stage with BadDump, unless `skip_bad`: then it is counted as `unreadable_file` and skipped."""
    for path in paths:
        try:
            yield from read_dump(path, stats)
        except BadDump as err:
            if not skip_bad:
                raise
            count_bad(stats, path, "unreadable_file", f"{err}; skipped (corpus.urls.skip_bad_dumps)")


def read_dump(path: Path, stats: Counter) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records of one dump, read by its real format; see `read_submissions`."""
    fmt = dump_format(path)
    if SUFFIX_FORMAT.get(path.suffix, fmt) != fmt:
        count_bad(stats, path, "misnamed_file", f"is named {path.suffix} but holds {fmt}; read as {fmt}")
    stream, kept, lines = open_dump(path, fmt), 0, 0
    try:
        with stream:
            for line in io.TextIOWrapper(stream, encoding="utf-8", errors="replace"):
                lines += 1
                stats["urls/records_read"] += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if isinstance(record, dict):
                    kept += 1
                    yield path.name, record
                else:
                    count_bad(stats, path, "corrupt_line", f"line {lines} is not a JSON object")
    # the decoders' errors (bz2 and gzip raise OSError); a failing disk raises StoreError, which stops the stage
    except (EOFError, OSError, zstandard.ZstdError, lzma.LZMAError) as err:
        count_bad(stats, path, "truncated_file", f"ends early or is damaged after {kept:,} records ({err}); "
                                                 "kept those, the rest of the file is lost")
    for damage in getattr(getattr(stream, "raw", None), "damage", []):
        stats["urls/damaged_bytes"] += damage.skipped
        where = f"the next frame at byte {damage.next_frame:,}" if damage.next_frame is not None else "the end"
        count_bad(stats, path, "damaged_frame", f"a damaged zstd frame at byte {damage.offset:,}: skipped "
                                                f"{damage.skipped:,} bytes to {where}; kept every record decoded "
                                                f"before and after it ({kept:,} from this dump)")
    if not kept:
        raise BadDump(f"dump {path} holds no JSON record ({lines:,} lines read)")


def count_bad(stats: Counter, path: Path, what: str, message: str) -> None:
    stats[f"urls/{what}"] += 1
    stats[f"urls/{path.name}/{what}"] += 1
    log.warning("%s: %s", path, message)


def normalise_url(url: str, tracking_params: Iterable[str]) -> str:
    """Canonical form for exact dedup: lower-case scheme and host, no www., default port, fragment,
    tracking parameters or trailing slash, and HTML entities left in the dumps decoded."""
    parts = urlsplit(html.unescape(url.strip()))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").removeprefix("www.")
    if parts.port and parts.port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    tracking = tuple(tracking_params)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not k.lower().startswith(tracking)]
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def rejection(record: dict[str, Any], cfg: dict[str, Any]) -> str | None:
    """Why a submission is not an article link, or None to keep it."""
    url = record.get("url")
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return "no_url"
    if record.get("is_self"):
        return "self_post"
    if record.get("over_18"):
        return "nsfw"
    if (record.get("score") or 0) < cfg["min_score"]:
        return "low_score"
    parts = urlsplit(html.unescape(url))
    host = (parts.hostname or "").lower()
    if any(host == d or host.endswith("." + d) for d in cfg["blocked_domains"]):
        return "blocked_domain"
    if PurePosixPath(parts.path).suffix.lower().lstrip(".") in cfg["blocked_extensions"]:
        return "blocked_extension"
    return None


class SeenUrls:
    """Normalised URLs taken by earlier dumps: one sorted array of 64-bit URL hashes per dump, in a
    folder that every run (and every machine sharing the store) reads.

    Reprocessing a dump yields its URLs again (a rerun is idempotent: its own file is not consulted),
    while a later dump that links one again skips it. Only the current run's hashes are held in RAM;
    earlier dumps' files are memory-mapped and searched.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.earlier = {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))} if folder else {}
        self.added: dict[str, set[int]] = defaultdict(set)

    @staticmethod
    def key(url: str) -> int:
        return xxhash.xxh3_64_intdigest(url.encode())

    def seen_before(self, url: str, dump: str) -> bool:
        """Whether another dump, in an earlier run or in this one, already gave this URL."""
        h = self.key(url)
        for name, hashes in self.earlier.items():
            if name != dump and hashes.size and hashes[min(np.searchsorted(hashes, h), hashes.size - 1)] == h:
                return True
        return any(h in added for name, added in self.added.items() if name != dump)

    def add(self, url: str, dump: str) -> None:
        self.added[dump].add(self.key(url))

    def close(self) -> None:
        """Write each dump's hashes (merged with what an earlier run of that dump wrote)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for dump, added in self.added.items():
            old = self.earlier.get(dump, np.zeros(0, dtype=np.uint64))
            merged = np.union1d(old, np.fromiter(added, dtype=np.uint64, count=len(added)))
            tmp = self.folder / f"{dump}.tmp.npy"
            np.save(tmp, merged)
            tmp.replace(self.folder / f"{dump}.npy")


def select_urls(records: Iterable[tuple[str, dict[str, Any]]], cfg: dict[str, Any], stats: Counter,
                seen: SeenUrls | None = None) -> Iterator[Document]:
    """Keep article submissions (score, NSFW, self-post and blacklist filters), once per normalised
    URL, and never a URL that an earlier dump in `seen` already gave."""
    seen = SeenUrls(None) if seen is None else seen
    taken: set[str] = set()
    for dump, record in records:
        reason = rejection(record, cfg)
        if reason:
            stats[f"urls/dropped_{reason}"] += 1
            continue
        key = normalise_url(record["url"], cfg["tracking_params"])
        if key in taken:
            stats["urls/dropped_duplicate"] += 1
            continue
        if seen.seen_before(key, dump):
            stats["urls/dropped_seen_before"] += 1
            continue
        taken.add(key)
        seen.add(key, dump)
        stats["urls/kept"] += 1
        # fetched as posted (a site may not answer without its www.); the id is the normalised form's
        url = urlsplit(html.unescape(record["url"].strip()))._replace(fragment="").geturl()
        yield Document(id=url_id(key), url=url, title=str(record.get("title") or ""),
                       subreddit=str(record.get("subreddit") or ""),
                       created_utc=int(float(record.get("created_utc") or 0)))


def shard_documents(docs: Iterable[Document], out_dir: Path, shard_docs: int) -> list[str]:
    """Write the documents in files of `shard_docs` each (00000.jsonl.zst, ...); returns their paths."""
    paths: list[str] = []
    docs = iter(docs)
    while chunk := list(itertools.islice(docs, shard_docs)):
        path = out_dir / f"{len(paths):05d}.jsonl.zst"
        write_documents(path, chunk)
        paths.append(str(path))
    return paths


def write_url_shards(dumps: list[str], out_dir: str, cfg: dict[str, Any], shard_docs: int,
                      seen_dir: str | None = None) -> dict[str, Any]:
    """Read the dumps and write the kept URLs as documents, in shards of `shard_docs`, under `out_dir`;
    `seen_dir` holds the URLs taken by earlier runs."""
    stats: Counter = Counter()
    records = read_submissions(tqdm([Path(p) for p in dumps], desc="urls", unit="dump"), stats, cfg["skip_bad_dumps"])
    seen = SeenUrls(Path(seen_dir) if seen_dir else None)
    shards = shard_documents(select_urls(records, cfg, stats, seen), Path(out_dir), shard_docs)
    seen.close()  # only after every shard is written: a killed run leaves no URL marked seen but unsaved
    return {"shards": shards, "stats": dict(stats)}
