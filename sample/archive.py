"""Write a web archive shaped like Common Crawl's and the Wayback Machine's, from a list of captures:
what `make demo` recovers dead links from, and what the tests look pages up in.

- Common Crawl: a WARC file per crawl and subset under `crawl-data/CRAWL/segments/0/SUBSET/`, the
  columnar index under `cc-index/table/cc-main/warc/crawl=CRAWL/subset=SUBSET/` (the index's column
  names and types, SURT order), each crawl's `cc-index-table.paths.gz`, and `collinfo.json`. Pages
  (status 200) go to the `warc` subset; redirects and errors to `crawldiagnostics`, as in Common Crawl.
- Wayback Machine: `wayback/cdx.json` (the CDX API's rows) and each capture's page under
  `wayback/replay/`, which `sample.web` serves as the API and the raw `id_` replay.
"""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import shutil
import uuid
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import surt
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from sample.web import replay_file

INDEX = "cc-index/table/cc-main/warc"
INDEX_SCHEMA = pa.schema([  # the columns of Common Crawl's index that a capture fills in, as it types them
    ("url_surtkey", pa.string()), ("url", pa.string()), ("url_host_name", pa.string()),
    ("fetch_time", pa.timestamp("us", tz="UTC")), ("fetch_status", pa.int16()), ("fetch_redirect", pa.string()),
    ("content_digest", pa.string()), ("content_mime_type", pa.string()), ("content_mime_detected", pa.string()),
    ("warc_filename", pa.string()), ("warc_record_offset", pa.int32()), ("warc_record_length", pa.int32()),
    ("warc_segment", pa.string())])
CDX_FIELDS = ["urlkey", "timestamp", "original", "mimetype", "statuscode", "digest", "length"]


@dataclass(frozen=True)
class Capture:
    """One capture of `url` at `when`: a page (`html`, status 200), or a redirect to `redirect`, or
    another status; in Common Crawl's crawl of that week, or in the Wayback Machine."""

    url: str
    when: dt.datetime
    html: str = ""
    status: int = 200
    mime: str = "text/html"
    redirect: str | None = None
    wayback: bool = False

    @property
    def crawl(self) -> str:
        year, week, _ = self.when.isocalendar()
        return f"CC-MAIN-{year}-{week:02d}"

    @property
    def subset(self) -> str:
        return "warc" if self.status == 200 else "crawldiagnostics"


def write_archive(root: Path, captures: list[Capture]) -> None:
    """The archive of `captures` under `root` (replacing what was there)."""
    shutil.rmtree(root, ignore_errors=True)
    common = sorted((c for c in captures if not c.wayback), key=lambda c: (c.crawl, c.subset))
    crawls = sorted({c.crawl for c in common})
    for crawl, in_crawl in groupby(common, key=lambda c: c.crawl):
        listing = [write_subset(root, crawl, subset, list(group))
                   for subset, group in groupby(in_crawl, key=lambda c: c.subset)]
        (root / "crawl-data" / crawl / "cc-index-table.paths.gz").write_bytes(
            gzip.compress("\n".join(listing).encode() + b"\n", mtime=0))
    (root / "collinfo.json").write_text(json.dumps([{"id": c, "name": f"{c} Index"} for c in reversed(crawls)],
                                                   indent=1))
    write_wayback(root, [c for c in captures if c.wayback])


def write_subset(root: Path, crawl: str, subset: str, captures: list[Capture]) -> str:
    """One crawl's subset: its WARC file and its index file; returns the index file's path under `root`."""
    name = f"crawl-data/{crawl}/segments/0/{subset}/{crawl}-00000.warc.gz"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(root / name, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for capture in captures:
            start = out.tell()
            writer.write_record(response(writer, capture))
            rows.append(index_row(capture, name, start, out.tell() - start))
    rows.sort(key=lambda r: (r["url_surtkey"], r["fetch_time"]))
    path = f"{INDEX}/crawl={crawl}/subset={subset}/part-00000-{uuid.uuid5(uuid.NAMESPACE_URL, name)}.c000.gz.parquet"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), root / path, compression="gzip")
    return path


def response(writer: WARCWriter, capture: Capture):
    """The WARC response record of a capture, dated when it was taken."""
    reason = {200: "OK", 301: "Moved Permanently", 302: "Found", 404: "Not Found"}.get(capture.status, "Status")
    headers = [("Content-Type", f"{capture.mime}; charset=utf-8")]
    headers += [("Location", capture.redirect)] if capture.redirect else []
    http = StatusAndHeaders(f"{capture.status} {reason}", headers, protocol="HTTP/1.1")
    record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, capture.url + capture.when.isoformat())}>"
    return writer.create_warc_record(capture.url, "response", payload=io.BytesIO(capture.html.encode()),
                                     http_headers=http, warc_headers_dict={
                                         "WARC-Date": capture.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                         "WARC-Record-ID": record_id})


def index_row(capture: Capture, warc: str, offset: int, length: int) -> dict:
    return {"url_surtkey": surt.surt(capture.url), "url": capture.url,
            "url_host_name": capture.url.split("/")[2], "fetch_time": capture.when,
            "fetch_status": capture.status, "fetch_redirect": capture.redirect,
            "content_digest": hashlib.sha1(capture.html.encode()).hexdigest().upper(),
            "content_mime_type": capture.mime, "content_mime_detected": capture.mime, "warc_filename": warc,
            "warc_record_offset": offset, "warc_record_length": length, "warc_segment": "0"}


def write_wayback(root: Path, captures: list[Capture]) -> None:
    """The CDX rows of the Wayback captures, and each page where the replay reads it."""
    rows = []
    for c in sorted(captures, key=lambda c: (surt.surt(c.url), c.when)):
        stamp = c.when.strftime("%Y%m%d%H%M%S")
        rows.append([surt.surt(c.url), stamp, c.url, c.mime, str(c.status),
                     hashlib.sha1(c.html.encode()).hexdigest().upper(), str(len(c.html))])
        file = replay_file(root, stamp, c.url)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(c.html, encoding="utf-8")
    (root / "wayback").mkdir(parents=True, exist_ok=True)
    (root / "wayback" / "cdx.json").write_text(json.dumps([CDX_FIELDS, *rows], indent=0))
