"""Step extract: the article text of each fetched page (newspaper3k, trafilatura or their ensemble)."""
from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# tldextract (used by newspaper3k) would otherwise download the public suffix list.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import charset_normalizer  # noqa: E402
import newspaper  # noqa: E402
import trafilatura  # noqa: E402
from warcio.archiveiterator import ArchiveIterator  # noqa: E402

from tasks import storage  # noqa: E402
from tasks.corpus.document import Document  # noqa: E402
from tasks.corpus.step import Step  # noqa: E402

log = logging.getLogger(__name__)
CHARSET_IN_HEADER = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)
CHARSET_IN_META = re.compile(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", re.I)
PLACEHOLDER_URL = "http://localhost/"
NEARLY_EMPTY_WORDS = 50  # below this, the precision pass may have dropped the article itself
SOCIAL_LINE = re.compile(r"^(share|follow|like this|also on|read more|related|advertisement|sign up|subscribe|"
                         r"click here|image:|photo:|credit:)", re.I)


def _newspaper_config() -> newspaper.Config:
    config = newspaper.Config()
    config.fetch_images = False
    config.memoize_articles = False
    return config


NEWSPAPER_CONFIG = _newspaper_config()


def decode_html(body: bytes, content_type: str = "") -> str:
    """Decode a page by the charset in its header, else its <meta>, else by detection."""
    for match in (CHARSET_IN_HEADER.search(content_type), CHARSET_IN_META.search(body[:4096])):
        if match:
            charset = match.group(1)
            charset = charset.decode("ascii", "replace") if isinstance(charset, bytes) else charset
            try:
                return body.decode(charset)
            except (LookupError, UnicodeDecodeError):
                continue
    best = charset_normalizer.from_bytes(body).best()
    return str(best) if best is not None else body.decode("utf-8", "replace")


def trafilatura_text(html: str, url: str | None, favor_precision: bool = False) -> str:
    return trafilatura.extract(html, url=url, include_comments=False, include_tables=False,
                               favor_precision=favor_precision) or ""


def without_edge_boilerplate(text: str) -> str:
    """Drop share/follow/subscribe lines, and one-word lines (datelines, labels) at either end."""
    lines = [line for line in text.split("\n") if not SOCIAL_LINE.match(line.strip())]
    while lines and len(lines[0].split()) < 2:
        lines.pop(0)
    while lines and len(lines[-1].split()) < 2:
        lines.pop()
    return "\n".join(lines)


def ensemble_text(html: str, url: str | None) -> str:
    """trafilatura's precision-favouring output, cleaned at the edges. When that comes out nearly
    empty, the default pass runs too, and wins if the precision pass lost over half of its text
    (then it cut into the article, not just the clutter around it)."""
    precise = trafilatura_text(html, url, favor_precision=True)
    if len(precise.split()) < NEARLY_EMPTY_WORDS:
        default = trafilatura_text(html, url)
        precise = precise if len(precise) >= len(default) / 2 else default
    return without_edge_boilerplate(precise)


EXTRACTORS = ("newspaper", "trafilatura", "ensemble")


def checked_method(method: str) -> str:
    if method not in EXTRACTORS:
        raise ValueError(f"unknown extractor {method!r}: use one of {', '.join(EXTRACTORS)}")
    return method


def extract(html: str, url: str | None = None, method: str = "newspaper") -> str:
    """The main article text of a page, or '' when it has none.

    Methods: "newspaper" (newspaper3k, the original OpenWebText's), "trafilatura", and
    "ensemble" (trafilatura's precision pass, with the default pass as a fallback, see `ensemble_text`).
    """
    if not html.strip():
        return ""
    if method == "trafilatura":
        return trafilatura_text(html, url)
    if method == "ensemble":
        return ensemble_text(html, url)
    checked_method(method)
    article = newspaper.Article(url or PLACEHOLDER_URL, config=NEWSPAPER_CONFIG)
    article.download(input_html=html)
    article.parse()
    return article.text.strip()


def shingle_scores(predicted: str, truth: str, n: int = 4) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted text's word n-grams against the true article's
    (the article-extraction-benchmark's metric; averaged over pages by the caller)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    pred, gold = grams(predicted), grams(truth)
    if not pred or not gold:
        return (1.0, 1.0, 1.0) if pred == gold else (0.0, 0.0, 0.0)
    overlap = len(pred & gold)
    precision, recall = overlap / len(pred), overlap / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall) if overlap else 0.0


def first_record_at(fh: IO[bytes], start: int, block: int = 1 << 16) -> int | None:
    """The offset of the first WARC record starting at or after `start`, found without reading what
    comes before: in a .warc.gz, where every record is a gzip member of its own, the first gzip
    header whose bytes inflate to "WARC/"; in a plain WARC, the first line starting "WARC/1."."""
    fh.seek(0)
    gzipped = fh.read(2) == b"\x1f\x8b"
    marker = b"\x1f\x8b\x08" if gzipped else b"\nWARC/1."
    pos = start - (0 if gzipped else 1)
    if start == 0:
        return 0
    while True:
        fh.seek(pos)
        data = fh.read(block + len(marker))
        if len(data) < len(marker):
            return None
        i = data.find(marker)
        while 0 <= i < block:
            candidate = pos + i + (0 if gzipped else 1)
            if not gzipped or _inflates_to_warc(fh, candidate):
                return candidate
            i = data.find(marker, i + 1)
        pos += block


def _inflates_to_warc(fh: IO[bytes], offset: int) -> bool:
    fh.seek(offset)
    try:
        return zlib.decompressobj(31).decompress(fh.read(1024), 16).startswith(b"WARC/")
    except zlib.error:  # three bytes inside compressed data that look like a gzip header
        return False


def warc_records(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, str, str]]:
    """(offset, url, decoded html) of each response record in a WARC file (a path or a store URL)
    that starts at a byte offset in [start, end): a big WARC is cut into shards by byte ranges, each
    shard seeks to its first record, and every record belongs to exactly one shard."""
    with storage.open_file(path) as fh:
        base = first_record_at(fh, start)
        if base is None or (end is not None and base >= end):
            return
        fh.seek(base)
        records = ArchiveIterator(fh)
        for record in records:
            body = record.content_stream().read() if record.rec_type == "response" else b""
            offset = records.get_record_offset()  # from the file start (warcio counts from tell())
            if end is not None and offset >= end:
                return
            if record.rec_type != "response":
                continue
            if getattr(record.raw_stream, "limit", 0):  # fewer bytes than its Content-Length: cut off
                raise EOFError(f"the record at byte {offset} is cut off")
            content_type = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
            yield offset, record.rec_headers.get_header("WARC-Target-URI"), decode_html(body, content_type)


class Extract(Step):
    """The article text of each fetched page; pages without one, or that break the extractor, are dropped."""

    name, label = "extract", "extracted"

    def __init__(self, method: str = "ensemble", enabled: bool = True):
        super().__init__(enabled)
        self.method = checked_method(method)  # at the door: per page it would only count errors

    def reject(self, doc: Document) -> str | None:
        if "\x00" in doc.html[:1024]:  # a binary body served as HTML (a WARC from elsewhere): not text
            doc.html = ""
            return "binary"
        doc.text, doc.html = extract(doc.html, doc.url, self.method), ""
        return None if doc.text else "empty"
