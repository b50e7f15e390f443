"""WARC files as the corpus's input: where a byte range's first record starts, and each response
record's URL and decoded HTML."""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

import charset_normalizer
from warcio.archiveiterator import ArchiveIterator

from tasks import storage

ORIGIN_HEADER = "OpenGPT2-Origin"  # where a page came from: live, a Common Crawl crawl id, or wayback:TIMESTAMP
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
    """The offset of the first WARC record starting at or after `start`, found from `start` on, without
    reading what comes before: in a .warc.gz, where every record is a gzip member of its own, a gzip
    header whose bytes inflate to "WARC/"; in a plain WARC, a line starting "WARC/1."; whichever comes
    first."""
    if start == 0:
        return 0
    pos = start - 1  # a plain record's line starts after a newline, which may be the byte before
    while True:
        fh.seek(pos)
        data = fh.read(block + len(PLAIN_MARK))
        if len(data) <= len(PLAIN_MARK):
            return None
        plain = data.find(PLAIN_MARK, 0, block + 1)
        gz = data.find(GZIP_MARK, 1)
        while 0 < gz < block + 1 and (plain < 0 or gz < plain + 1):
            if _inflates_to_warc(fh, pos + gz):
                return pos + gz
            gz = data.find(GZIP_MARK, gz + 1)
        if plain >= 0:
            return pos + plain + 1
        pos += block


PLAIN_MARK, GZIP_MARK = b"\nWARC/1.", b"\x1f\x8b\x08"


def _inflates_to_warc(fh: IO[bytes], offset: int) -> bool:
    fh.seek(offset)
    try:
        return zlib.decompressobj(31).decompress(fh.read(1024), 16).startswith(b"WARC/")
    except zlib.error:  # three bytes inside compressed data that look like a gzip header
        return False


class WarcPage(NamedTuple):
    """One response record: where it starts, its URL and decoded HTML, where the page came from (the
    `OpenGPT2-Origin` header: live, a Common Crawl crawl id, wayback:TIMESTAMP; "" when another
    tool wrote the file) and when it was captured (`WARC-Date`)."""

    offset: int
    url: str
    html: str
    origin: str
    captured: str


def warc_records(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[WarcPage]:
    """The `WarcPage` of each response record in a WARC file (a path or a store URL)
    that starts at a byte offset in [start, end): a big WARC is cut into shards by byte ranges, each
    shard seeks to its first record, and every record belongs to exactly one shard. Only the range
    and the one record that crosses its end are read.

    A record cut off by the file's end raises EOFError; a malformed one, warcio's or zlib's error.
    Reading errors of the machine come as `storage.StoreError`, never as either."""
    with storage.open_file(path, end) as fh:
        base = first_record_at(fh, start)
        if base is None or (end is not None and base >= end):
            return
        fh.seek(base)
        records = ArchiveIterator(fh)
        for record in records:
            body = record.content_stream().read() if record.rec_type == "response" else b""
            offset = records.get_record_offset()  # from the file start (warcio counts from tell())
            if end is not None and offset >= end:  # past blank lines that straddled the end
                return
            if record.rec_type == "response":
                if getattr(record.raw_stream, "limit", 0):  # fewer bytes than its Content-Length: cut off
                    raise EOFError(f"the record at byte {offset} is cut off")
                content_type = record.http_headers.get_header("Content-Type", "") if record.http_headers else ""
                headers = record.rec_headers
                yield WarcPage(offset, headers.get_header("WARC-Target-URI"), decode_html(body, content_type),
                               headers.get_header(ORIGIN_HEADER, ""), headers.get_header("WARC-Date", ""))
            if end is not None and offset + records.get_record_length() >= end:  # the next one starts past it
                return
