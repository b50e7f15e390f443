"""Captures of the wanted pages in Common Crawl's columnar URL index, found in bulk.

The index (`cc-index/table/cc-main/warc/`, hive-partitioned by `crawl=` and `subset=`) holds a row
per capture, its files sorted by `url_surtkey` one after another. A per-URL API answers about one
lookup a second (11 days for 1M URLs); here every wanted URL is looked up at once, in passes that
each hold a bounded part of the data:

1. `file_row_groups`: the key range of every row group of the crawls near the wanted dates, from the
   Parquet footers alone;
2. `route_shard`, per shard of wanted URLs: their SURT keys, sorted, each tagged with the row groups
   that may hold it; it returns how many keys each row group got;
3. `batches` cuts the row groups into runs of one file holding at most `batch_keys` wanted keys, and
   `scan_batch` reads, per run, only those row groups and only the columns a capture needs;
4. `nearest_for_shard`: for each URL, the capture nearest its submission time within `max_days`,
   with a status and MIME type a page can come from.

A task holds at most `batch_keys` keys (or one row group's) and one row group, however many URLs
there are: memory stays flat as the corpus grows, and each index row group is read once.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import surt

from tasks import storage
from tasks.corpus.document import read_documents
from tasks.corpus.fetch import HTML_TYPES

CAPTURE_SCHEMA = pa.schema([  # a capture's columns of the index, as Common Crawl types them
    ("url_surtkey", pa.string()), ("url", pa.string()), ("fetch_time", pa.timestamp("ms", tz="UTC")),
    ("fetch_status", pa.int16()), ("content_mime_detected", pa.string()), ("warc_filename", pa.string()),
    ("warc_record_offset", pa.int64()), ("warc_record_length", pa.int64()), ("fetch_redirect", pa.string())])
CRAWL_ID = re.compile(r"CC-MAIN-(\d{4})-(\d{2})$")
CRAWL_IN_PATH = re.compile(r"CC-MAIN-\d{4}-\d{2}")


def surt_key(url: str) -> str:
    """The key Common Crawl's index sorts a URL by: SURT, as the `surt` library writes it (Internet
    Archive's rules: scheme and `www` dropped, host reversed, path lowercased, query sorted,
    fragment dropped)."""
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


def list_crawls(collinfo: str) -> list[str]:
    """The crawl ids of Common Crawl's columnar index, from its `collinfo.json` (a URL or a path)."""
    return sorted(c["id"] for c in json.loads(storage.read_text(collinfo)) if CRAWL_ID.match(c["id"]))


def index_files(base: str, crawls: Iterable[str], subset: str = "warc") -> list[str]:
    """The Parquet files of some crawls' `subset`, in key order within each crawl, as each crawl's
    `crawl-data/CRAWL/cc-index-table.paths.gz` lists them (an HTTP store cannot be listed); paths are
    relative to `base`, the store's root (`https://data.commoncrawl.org/`, `s3://commoncrawl/`)."""
    files = []
    for crawl in crawls:
        listing = storage.join(base, "crawl-data", crawl, "cc-index-table.paths.gz")
        with storage.open_file(listing) as fh:
            lines = gzip.decompress(fh.read()).decode().split()
        files += sorted(storage.join(base, line) for line in lines if f"/subset={subset}/" in line)
    return files


def crawl_of_path(path: str) -> str:
    """The crawl id in a path of Common Crawl's (an index file's `crawl=…`, a WARC file's `crawl-data/…`)."""
    match = CRAWL_IN_PATH.search(path)
    if not match:
        raise ValueError(f"{path} names no Common Crawl crawl (CC-MAIN-YYYY-WW)")
    return match[0]


@dataclass(frozen=True)
class RowGroup:
    """One row group of an index file and the smallest and largest key it holds."""

    path: str
    number: int
    first: str
    last: str


def file_row_groups(path: str) -> list[RowGroup]:
    """The row groups of one index file, from its footer's statistics."""
    with storage.open_file(path) as fh:
        meta = pq.ParquetFile(fh).metadata
    return [RowGroup(path, g, first, last) for g, (first, last) in enumerate(row_group_ranges(meta))]


def row_group_ranges(meta: pq.FileMetaData) -> list[tuple[str, str]]:
    """(smallest, largest) `url_surtkey` of each row group; the whole key space for a row group
    written without statistics, which must then be read."""
    column = meta.schema.names.index("url_surtkey")
    ranges = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        ranges.append((stats.min, stats.max) if stats is not None and stats.has_min_max else ("", "\U0010ffff"))
    return ranges


def write_wanted(urls_path: str, out: str, skip: frozenset[str] = frozenset()) -> int:
    """The URLs of a URL shard but `skip`, with their submission times, as a wanted file; returns how many."""
    table = read_wanted(urls_path)
    table = table.filter(pc.invert(pc.is_in(table["url"], value_set=pa.array(list(skip), pa.string()))))
    write_parquet(table, out)
    return table.num_rows


def read_wanted(path: str) -> pa.Table:
    """A wanted file (Parquet of `url` and `time`), or a URL shard's documents (every URL wanted)."""
    if not path.endswith(".jsonl.zst"):
        return read_parquet(path)
    docs = list(read_documents(path))
    return pa.table({"url": pa.array([d.url for d in docs], pa.string()),
                     "time": pa.array([d.created_utc for d in docs], pa.int64())})


def time_range(path: str) -> tuple[int, int] | tuple[()]:
    """The earliest and latest time of a wanted file; () when it is empty."""
    times = read_wanted(path)["time"]
    return (pc.min(times).as_py(), pc.max(times).as_py()) if len(times) else ()


def wanted_table(urls: Sequence[str], times: Sequence[int]) -> pa.Table:
    """The wanted URLs (`row`: their position in the shard) with their keys and times, by key."""
    table = pa.table({"key": pa.array([surt_key(u) for u in urls], pa.string()), "row": np.arange(len(urls), dtype=np.int64),
                      "time": np.asarray(times, dtype=np.int64)})
    return table.sort_by("key")


def route_keys(keys: pa.Array, groups: Sequence[RowGroup], crawls: Sequence[str] | None = None) -> tuple[pa.Table, np.ndarray]:
    """The sorted, distinct `keys` each row group (of `crawls`, default all) may hold (by key range),
    as rows (key, group), by group; and how many each group got. Groups of different crawls overlap,
    so a key may go to several."""
    sorted_keys = np.asarray(keys.to_pylist(), dtype=object)
    counts = np.zeros(len(groups), dtype=np.int64)
    parts = []
    for g, group in enumerate(groups):
        if crawls is not None and crawl_of_path(group.path) not in crawls:
            continue
        lo, hi = np.searchsorted(sorted_keys, group.first, "left"), np.searchsorted(sorted_keys, group.last, "right")
        counts[g] = hi - lo
        if hi > lo:
            parts.append(pa.table({"key": pa.array(sorted_keys[lo:hi], pa.string()),
                                   "group": pa.array(np.full(hi - lo, g, dtype=np.int32))}))
    table = pa.concat_tables(parts) if parts else pa.table({"key": pa.array([], pa.string()),
                                                            "group": pa.array([], pa.int32())})
    return table, counts


def scan_index_file(path: str, keys: Sequence[str], numbers: Sequence[int] | None = None) -> pa.Table:
    """The captures in one index file whose key is one of `keys` (sorted): only the row groups (of
    `numbers`, default all) whose key range holds one of them are read, and only the columns a
    capture needs."""
    keys = np.asarray(keys, dtype=object)
    parts = [CAPTURE_SCHEMA.empty_table()]
    with storage.open_file(path) as fh:
        parquet = pq.ParquetFile(fh)
        ranges = row_group_ranges(parquet.metadata)
        for g in range(len(ranges)) if numbers is None else numbers:
            first, last = ranges[g]
            lo, hi = np.searchsorted(keys, first, "left"), np.searchsorted(keys, last, "right")
            if hi > lo:  # some wanted key falls in this row group's range
                group = parquet.read_row_group(g, columns=CAPTURE_SCHEMA.names).cast(CAPTURE_SCHEMA)
                parts.append(group.filter(pc.is_in(group["url_surtkey"], value_set=pa.array(keys[lo:hi], pa.string()))))
    return pa.concat_tables(parts)


ROUTED_ROWS = 4096  # rows per row group of a routed-keys file: a batch reads only the ones it needs


def route_shard(wanted_path: str, groups: Sequence[RowGroup], out_dir: str, shard: str,
                crawls: Sequence[str] | None = None) -> np.ndarray:
    """Pass 2 for one shard of wanted URLs (`read_wanted`): its keyed rows by key
    (`out_dir`/wanted/SHARD.parquet) and its keys tagged with the row groups that may hold them
    (`out_dir`/routed/SHARD.parquet); returns how many keys each row group got."""
    table = read_wanted(wanted_path)
    wanted = wanted_table(table["url"].to_pylist(), table["time"].to_numpy())
    write_parquet(wanted, storage.join(out_dir, "wanted", f"{shard}.parquet"))
    routed, counts = route_keys(wanted["key"].unique(), groups, crawls)
    write_parquet(routed, storage.join(out_dir, "routed", f"{shard}.parquet"), row_group_size=ROUTED_ROWS)
    return counts


@dataclass(frozen=True)
class Batch:
    """Consecutive row groups of one index file (global numbers `start` to `stop` - 1)."""

    path: str
    start: int
    stop: int
    numbers: tuple[int, ...]  # the row groups' numbers within their file


def batches(groups: Sequence[RowGroup], keys_per_group: np.ndarray, batch_keys: int) -> list[Batch]:
    """The row groups that got a key, cut into runs of one file with at most `batch_keys` keys
    (a row group with more is a run of its own)."""
    runs: list[list[int]] = []
    total = 0
    for g in np.flatnonzero(keys_per_group):
        same_file = runs and groups[runs[-1][-1]].path == groups[g].path
        if same_file and total + keys_per_group[g] <= batch_keys:
            runs[-1].append(int(g))
            total += keys_per_group[g]
        else:
            runs.append([int(g)])
            total = keys_per_group[g]
    return [Batch(groups[r[0]].path, r[0], r[-1] + 1, tuple(groups[g].number for g in r)) for r in runs]


def scan_batch(batch: Batch, shards: Sequence[str], out_dir: str, name: str) -> dict[str, str]:
    """Pass 3 for one run of row groups: the captures of the keys that `shards` routed to them,
    written per shard (`out_dir`/captures/SHARD/NAME.parquet); returns {shard: file}."""
    keys = {}
    for shard in shards:
        routed = read_parquet(storage.join(out_dir, "routed", f"{shard}.parquet"),
                              filters=[("group", ">=", batch.start), ("group", "<", batch.stop)])
        keys[shard] = routed["key"]
    every = pa.chunked_array(list(keys.values()), pa.string()).unique().sort()
    captures = scan_index_file(batch.path, every.to_pylist(), batch.numbers)
    out = {}
    for shard, wanted in keys.items():
        mine = captures.filter(pc.is_in(captures["url_surtkey"], value_set=wanted.combine_chunks()))
        if mine.num_rows:
            out[shard] = storage.join(out_dir, "captures", shard, f"{name}.parquet")
            write_parquet(mine, out[shard])
    return out


def nearest_for_shard(out_dir: str, shard: str, capture_paths: Sequence[str], max_days: int) -> pa.Table:
    """Pass 4 for one shard: each wanted URL's nearest usable capture (`nearest_captures`)."""
    wanted = read_parquet(storage.join(out_dir, "wanted", f"{shard}.parquet"))
    captures = pa.concat_tables([CAPTURE_SCHEMA.empty_table()] + [read_parquet(p) for p in capture_paths])
    return nearest_captures(wanted, captures, max_days)


def read_parquet(path: str, filters: list | None = None) -> pa.Table:
    """A Parquet file (row groups outside `filters` unread)."""
    with storage.open_file(path) as fh:
        return pq.read_table(fh, filters=filters)


def write_parquet(table: pa.Table, path: str, row_group_size: int | None = None) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    storage.write_bytes(path, sink.getvalue().to_pybytes())


def nearest_captures(wanted: pa.Table, captures: pa.Table, max_days: int,
                     mimes: Sequence[str] = HTML_TYPES) -> pa.Table:
    """For each wanted row, the capture of its key nearest its time within `max_days`: a page (status
    200, a page's MIME type) if there is one, else a redirect (3xx with a target, from the
    `crawldiagnostics` subset), which `redirect` marks; rows with neither are left out."""
    status = captures["fetch_status"]
    page = pc.and_(pc.equal(status, 200), pc.is_in(captures["content_mime_detected"], value_set=pa.array(list(mimes))))
    redirect = pc.and_(pc.and_(pc.greater_equal(status, 300), pc.less(status, 400)),
                       pc.is_valid(captures["fetch_redirect"]))
    usable = captures.append_column("redirect", redirect).filter(pc.or_(page, redirect))
    joined = wanted.join(usable, keys="key", right_keys="url_surtkey", join_type="inner")
    if not joined.num_rows:
        return joined.append_column("distance_s", pa.array([], pa.int64()))
    seconds = pc.cast(pc.cast(joined["fetch_time"], pa.timestamp("s", tz="UTC")), pa.int64())
    distance = pc.abs(pc.subtract(seconds, joined["time"]))
    joined = joined.append_column("distance_s", distance).filter(pc.less_equal(distance, max_days * 86400))
    # the nearest per row: sort by (row, redirect, distance, time), keep each row's first
    ordered = joined.sort_by([("row", "ascending"), ("redirect", "ascending"), ("distance_s", "ascending"),
                              ("fetch_time", "ascending")])
    rows = ordered["row"].to_numpy()
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return ordered.filter(pa.array(first))
