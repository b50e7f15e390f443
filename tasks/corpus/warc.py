"""WARC files as the corpus's input: where a byte range's first record starts, and each response
record's URL and decoded HTML."""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import charset_normalizer
from warcio.archiveiterator import ArchiveIterator

from tasks import storage

CHARSET_IN_HEADER = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)
CHARSET_IN_META = re.compile(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", re.I)


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
