"""Captures of the wanted pages in Common Crawl's columnar URL index, found in bulk.

The index (`cc-index/table/cc-main/warc/`, hive-partitioned by `crawl=` and `subset=`) holds a row
per capture, its files sorted by `url_surtkey` one after another. A per-URL API answers about one
lookup a second (11 days for 1M URLs); here every wanted URL is looked up at once, in three passes
that each hold a bounded part of the data:

1. `file_ranges`: the key range of every index file of the crawls near the wanted dates, from the
   Parquet footers alone;
2. `route_wanted`, per shard of wanted URLs: their SURT keys, sorted and cut by those ranges, so
   that each index file gets only the keys it may hold;
3. `scan_index_file`, per index file: the row groups whose key range holds one of its keys, only the
   columns a capture needs, kept where the key is wanted;
then `nearest_captures`, per shard: for each URL, the capture nearest its submission time within
`max_days`, with a status and MIME type a page can come from.

A task holds one index file's share of the wanted keys and one row group, however many URLs there
are: memory stays flat as the corpus grows, with more index files and shards.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import surt

from tasks import storage

CAPTURE_COLUMNS = ["url_surtkey", "url", "fetch_time", "fetch_status", "content_mime_detected", "warc_filename",
                   "warc_record_offset", "warc_record_length"]
CRAWL_ID = re.compile(r"CC-MAIN-(\d{4})-(\d{2})$")


def surt_key(url: str) -> str:
    """The key Common Crawl's index sorts a URL by: SURT, as the `surt` library that built it writes
    it (scheme and `www` dropped, host reversed, path lowercased, query sorted, fragment dropped)."""
    return surt.surt(url)


def crawl_start(crawl: str) -> dt.datetime:
    """The Monday of the ISO week a crawl id names (CC-MAIN-2019-35: the week its crawl began), UTC."""
    match = CRAWL_ID.match(crawl)
    if not match:
        raise ValueError(f"{crawl!r} is not a Common Crawl crawl id (CC-MAIN-YYYY-WW)")
    day = dt.date.fromisocalendar(int(match[1]), int(match[2]), 1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def crawls_near(crawls: Iterable[str], times: Sequence[int], max_days: int) -> list[str]:
    """The crawls that began within `max_days` of some wanted time (seconds since the epoch); a
    crawl takes weeks, so one that began a little before a submission may still hold its page."""
    if not len(times):
        return []
    earliest, latest = min(times) - max_days * 86400, max(times) + max_days * 86400
    return sorted(c for c in crawls if earliest <= crawl_start(c).timestamp() <= latest)


def index_files(root: str, crawls: Iterable[str], subset: str = "warc") -> list[str]:
    """The Parquet files of some crawls' `subset` under the index root, in key order within each crawl."""
    fs, path = storage.filesystem(root)
    files = []
    for crawl in crawls:
        found = fs.glob(f"{path.rstrip('/')}/crawl={crawl}/subset={subset}/*.parquet")
        files += [storage.join(root, f"crawl={crawl}/subset={subset}", p.rsplit("/", 1)[1]) for p in sorted(found)]
    return files


@dataclass(frozen=True)
class FileRange:
    """An index file and the smallest and largest key it holds."""

    path: str
    first: str
    last: str


def file_ranges(paths: Iterable[str]) -> list[FileRange]:
    """Each index file's key range, read from its footer's row-group statistics."""
    ranges = []
    for path in paths:
        groups = row_group_ranges(footer(path))
        if groups:
            ranges.append(FileRange(path, min(g[0] for g in groups), max(g[1] for g in groups)))
    return ranges


def footer(path: str) -> pq.FileMetaData:
    with storage.open_file(path) as fh:
        return pq.ParquetFile(fh).metadata


def row_group_ranges(meta: pq.FileMetaData) -> list[tuple[str, str]]:
    """(smallest, largest) `url_surtkey` of each row group; the whole key space for a row group
    written without statistics, which must then be read."""
    column = meta.schema.names.index("url_surtkey")
    ranges = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        ranges.append((stats.min, stats.max) if stats is not None and stats.has_min_max else ("", "\U0010ffff"))
    return ranges


def wanted_table(urls: Sequence[str], times: Sequence[int]) -> pa.Table:
    """The wanted URLs (`row`: their position in the shard) with their keys and times, by key."""
    table = pa.table({"key": [surt_key(u) for u in urls], "row": np.arange(len(urls), dtype=np.int64),
                      "time": np.asarray(times, dtype=np.int64)})
    return table.sort_by("key")


def route_wanted(wanted: pa.Table, ranges: Sequence[FileRange]) -> dict[str, pa.Table]:
    """The shard's wanted rows each index file may hold (by key range); a key between two files'
    ranges is in no file, and so goes nowhere."""
    keys = np.asarray(wanted["key"].to_pylist(), dtype=object)  # sorted
    routed = {}
    for r in ranges:
        lo, hi = np.searchsorted(keys, r.first, "left"), np.searchsorted(keys, r.last, "right")
        if hi > lo:
            routed[r.path] = wanted.slice(lo, hi - lo)
    return routed


def scan_index_file(path: str, keys: Sequence[str]) -> pa.Table:
    """The captures in one index file whose key is one of `keys` (sorted): only the row groups whose
    key range holds one of them are read, and only the columns a capture needs."""
    keys = np.asarray(keys, dtype=object)
    parts = [capture_schema().empty_table()]
    with storage.open_file(path) as fh:
        parquet = pq.ParquetFile(fh)
        for g, (first, last) in enumerate(row_group_ranges(parquet.metadata)):
            lo, hi = np.searchsorted(keys, first, "left"), np.searchsorted(keys, last, "right")
            if hi > lo:  # some wanted key falls in this row group's range
                group = parquet.read_row_group(g, columns=CAPTURE_COLUMNS).cast(capture_schema())
                parts.append(group.filter(pc.is_in(group["url_surtkey"], value_set=pa.array(keys[lo:hi], pa.string()))))
    return pa.concat_tables(parts)


def capture_schema() -> pa.Schema:
    return pa.schema([("url_surtkey", pa.string()), ("url", pa.string()), ("fetch_time", pa.timestamp("ms", tz="UTC")),
                      ("fetch_status", pa.int16()), ("content_mime_detected", pa.string()),
                      ("warc_filename", pa.string()), ("warc_record_offset", pa.int64()),
                      ("warc_record_length", pa.int64())])


def route_shard(wanted_path: str, ranges: Sequence[FileRange], out_dir: str, shard: str) -> dict[str, str]:
    """Pass 2 for one shard of wanted URLs (a Parquet file of `url` and `time`): its keyed rows by key
    (`out_dir`/wanted/SHARD.parquet), and the keys each index file may hold
    (`out_dir`/routed/FILE/SHARD.parquet); returns {index file: its keys' file}."""
    table = read_parquet(wanted_path)
    wanted = wanted_table(table["url"].to_pylist(), table["time"].to_numpy())
    write_parquet(wanted, storage.join(out_dir, "wanted", f"{shard}.parquet"))
    routed = {}
    for path, part in route_wanted(wanted, ranges).items():
        routed[path] = storage.join(out_dir, "routed", f"{ranges_number(ranges, path):05d}", f"{shard}.parquet")
        write_parquet(part.select(["key"]), routed[path])
    return routed


def ranges_number(ranges: Sequence[FileRange], path: str) -> int:
    return next(i for i, r in enumerate(ranges) if r.path == path)


def scan_for_shards(index_path: str, routed: dict[str, str], out_dir: str, number: int) -> dict[str, str]:
    """Pass 3 for one index file: its captures of the keys every shard routed to it (`routed`: {shard:
    keys file}), written per shard (`out_dir`/captures/SHARD/FILE.parquet); returns {shard: file}."""
    keys = {shard: read_parquet(path)["key"] for shard, path in routed.items()}
    every = pa.chunked_array(list(keys.values())).unique().sort()
    captures = scan_index_file(index_path, every.to_pylist())
    out = {}
    for shard, wanted in keys.items():
        mine = captures.filter(pc.is_in(captures["url_surtkey"], value_set=wanted.combine_chunks()))
        if mine.num_rows:
            out[shard] = storage.join(out_dir, "captures", shard, f"{number:05d}.parquet")
            write_parquet(mine, out[shard])
    return out


def nearest_for_shard(out_dir: str, shard: str, capture_paths: Sequence[str], max_days: int) -> pa.Table:
    """Pass 4 for one shard: each wanted URL's nearest usable capture (`nearest_captures`)."""
    wanted = read_parquet(storage.join(out_dir, "wanted", f"{shard}.parquet"))
    captures = pa.concat_tables([capture_schema().empty_table()] + [read_parquet(p) for p in capture_paths])
    return nearest_captures(wanted, captures, max_days)


def read_parquet(path: str) -> pa.Table:
    with storage.open_file(path) as fh:
        return pq.read_table(fh)


def write_parquet(table: pa.Table, path: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(path, sink.getvalue().to_pybytes())


def nearest_captures(wanted: pa.Table, captures: pa.Table, max_days: int,
                     mimes: Sequence[str] = ("text/html", "application/xhtml+xml")) -> pa.Table:
    """For each wanted row, the capture of its key nearest its time within `max_days`, among those
    with status 200 and a page's MIME type; rows with none are left out."""
    usable = captures.filter(pc.and_(pc.equal(captures["fetch_status"], 200),
                                     pc.is_in(captures["content_mime_detected"], value_set=pa.array(list(mimes)))))
    joined = wanted.join(usable, keys="key", right_keys="url_surtkey", join_type="inner")
    if not joined.num_rows:
        return joined.append_column("distance_s", pa.array([], pa.int64()))
    seconds = pc.cast(pc.cast(joined["fetch_time"], pa.timestamp("s", tz="UTC")), pa.int64())
    distance = pc.abs(pc.subtract(seconds, joined["time"]))
    joined = joined.append_column("distance_s", distance).filter(pc.less_equal(distance, max_days * 86400))
    # the nearest per row: sort by (row, distance, time), keep each row's first
    ordered = joined.sort_by([("row", "ascending"), ("distance_s", "ascending"), ("fetch_time", "ascending")])
    rows = ordered["row"].to_numpy()
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return ordered.filter(pa.array(first))
