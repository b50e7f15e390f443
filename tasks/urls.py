"""Stage 1, urls: Reddit submissions from Pushshift dumps -> unique, normalised article URLs."""
from __future__ import annotations

import bz2
import html
import io
import json
import logging
import lzma
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import zstandard
from prefect import task
from tqdm import tqdm

from tasks.caching import FilesAndCode
from tasks.document import Document, url_id, write_documents

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}


class ZstdReader(io.RawIOBase):
    """Streams a (multi-frame) zstd file and raises EOFError when it ends mid-frame, which
    zstandard's own stream_reader reports as a clean end."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.pending = raw, b""
        self.frame = self._new_frame()

    @staticmethod
    def _new_frame():
        # Pushshift's dumps are written with a 2 GiB window; the library's default refuses them.
        return zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = self.raw.read(1 << 20)
            if not chunk:
                if not self.frame.eof:
                    raise EOFError("zstd stream ends in the middle of a frame")
                return 0
            self.pending = self._decompress(chunk)
        n = min(len(buffer), len(self.pending))
        buffer[:n], self.pending = self.pending[:n], self.pending[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self.frame.eof:
                self.frame = self._new_frame()
            out.append(self.frame.decompress(data))
            data = self.frame.unused_data if self.frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_dump(path: Path) -> BinaryIO:
    """Open a dump for streaming, whatever it is compressed with (.zst, .xz, .bz2 or plain NDJSON)."""
    raw = open(path, "rb")
    if path.suffix == ".zst":
        return io.BufferedReader(ZstdReader(raw), buffer_size=1 << 20)
    if path.suffix == ".xz":
        return lzma.open(raw)
    if path.suffix == ".bz2":
        return bz2.open(raw)
    return raw


def read_submissions(paths: Iterable[Path], stats: Counter) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dump name, record) for each JSON record of the dumps; corrupt lines and truncated files are
    counted (in total and per dump), logged and skipped, and the records before the damage are kept."""
    for path in paths:
        if not path.is_file():  # a wrong setting, not damaged input: stop and say so
            raise FileNotFoundError(f"dump {path} does not exist: check corpus.dumps")
        try:
            with open_dump(path) as stream:
                for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="replace"), 1):
                    stats["urls/records_read"] += 1
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    if isinstance(record, dict):
                        yield path.name, record
                    else:
                        count_bad(stats, path, "corrupt_line", f"line {number} is not a JSON object")
        except (EOFError, OSError, zstandard.ZstdError, lzma.LZMAError) as err:
            count_bad(stats, path, "truncated_file", f"ends early ({err}); kept the records read before it")


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
    """Normalised URLs already taken from earlier dumps, kept on disk (SQLite) across runs.

    Each URL remembers the dump it first came from, so reprocessing that same dump yields it
    again (a rerun is idempotent) while any later dump that links it again skips it.
    """

    def __init__(self, path: Path | None):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(":memory:" if path is None else path)
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (url TEXT PRIMARY KEY, dump TEXT NOT NULL)")

    def first_dump(self, url: str) -> str | None:
        row = self.db.execute("SELECT dump FROM seen WHERE url = ?", (url,)).fetchone()
        return row[0] if row else None

    def add(self, url: str, dump: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (url, dump))

    def close(self) -> None:
        self.db.commit()
        self.db.close()


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
        first = seen.first_dump(key)
        if first not in (None, dump):
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


@task(name="urls", cache_policy=FilesAndCode(files=("dumps",)))
def urls_task(dumps: list[str], out: str, cfg: dict[str, Any], seen_db: str | None = None) -> dict[str, Any]:
    """Read the dumps and write the kept URLs as documents to `out` (jsonl.zst); `seen_db` is the
    SQLite file of URLs taken by earlier runs."""
    stats: Counter = Counter()
    records = read_submissions(tqdm([Path(p) for p in dumps], desc="urls", unit="dump"), stats)
    seen = SeenUrls(Path(seen_db) if seen_db else None)
    try:
        write_documents(Path(out), select_urls(records, cfg, stats, seen))
    finally:
        seen.close()
    return {"path": out, "stats": dict(stats)}
