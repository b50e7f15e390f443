"""Stage 2 from web archives: for each wanted URL, the capture nearest its submission's time within
`max_days`, from Common Crawl, else from the Wayback Machine.

- Common Crawl: every wanted URL of every shard is looked up at once in the columnar index
  (`archive_index`'s passes, each a map over the attached Dask cluster), redirect captures are
  followed once, and each shard's records are read by byte range, those of one WARC file in offset
  order, close neighbours in one request.
- Wayback Machine: what Common Crawl lacks (and every submission older than its index, 2013) is
  looked up one URL at a time in the CDX API, at most `requests_per_s`, and read through the raw
  `id_` replay.

The pages go into the shard's `pages.warc.gz` with the live fetch's journal, so a killed run resumes
where it stopped, and each keeps its origin and capture time.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec.utils
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from httpx_retries import RetryTransport
from tqdm import tqdm
from warcio.archiveiterator import ArchiveIterator

from tasks import storage
from tasks.cluster import cluster_map, pace
from tasks.corpus import archive_index as ai
from tasks.corpus.fetch import HTML_TYPES, Fetched, PageStore, check_failures, is_binary, retry_policy
from tasks.errors import STOPPING, Interrupted

log = logging.getLogger(__name__)
WAYBACK_TIME = "%Y%m%d%H%M%S"
WARC_DATE = "%Y-%m-%dT%H:%M:%SZ"  # as the WARC standard writes a capture time
MAX_BLOCK = 8 << 20  # bytes of neighbouring records read in one request at most: a task holds `concurrency` of them


def with_endpoints(archive: dict[str, Any], endpoints: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    """`corpus.fetch.archive` with some archives' addresses replaced (the sample's, served on loopback)."""
    return {k: {**v, **(endpoints or {}).get(k, {})} if isinstance(v, dict) else v for k, v in archive.items()}


def lookup(wanted: dict[str, str], out_dir: str, archive: dict[str, Any]) -> dict[str, str]:
    """Common Crawl's nearest capture of every wanted URL ({shard: wanted file}), redirects followed
    once: {shard: captures file}, a row per URL found (`row`: its row in the wanted file)."""
    cc, max_days = archive["commoncrawl"], archive["max_days"]
    every = ai.list_crawls(cc["collinfo"])
    near = {s: ai.crawls_near(every, span, max_days)  # per shard: a shard's URLs come from one dump month or so
            for s, span in zip(wanted, cluster_map(ai.time_range, list(wanted.values())))}
    crawls = sorted({c for found in near.values() for c in found})
    log.info("archive lookup: %d wanted files against %d crawls near their dates (%s)", len(wanted), len(crawls),
             ", ".join(crawls) or "none")
    pages = ai.index_files(cc["base"], crawls, "warc")
    diagnostics = ai.index_files(cc["base"], crawls, "crawldiagnostics")
    first = lookup_round(wanted, near, pages + diagnostics, storage.join(out_dir, "first"), max_days,
                         cc["batch_keys"])
    shards = list(wanted)
    targets_dir = storage.join(out_dir, "redirects")
    targets = dict(zip(shards, cluster_map(redirect_targets, [first[s] for s in shards],
                                           [storage.join(targets_dir, f"{s}.parquet") for s in shards])))
    followed = {s: path for s, path in targets.items() if path}
    second = lookup_round(followed, near, pages, storage.join(out_dir, "second"), max_days, cc["batch_keys"]) \
        if followed else {}
    outs = [storage.join(out_dir, "captures", f"{s}.parquet") for s in shards]
    cluster_map(merge_redirects, [first[s] for s in shards], [followed.get(s) for s in shards],
                [second.get(s) for s in shards], outs)
    return dict(zip(shards, outs))


def lookup_round(wanted: dict[str, str], near: dict[str, list[str]], files: list[str], out_dir: str, max_days: int,
                 batch_keys: int) -> dict[str, str]:
    """`archive_index`'s passes over `files` for every wanted file, each against the crawls `near` its
    dates: {shard: nearest captures file}."""
    shards = list(wanted)
    groups = [g for found in cluster_map(ai.file_row_groups, files) for g in found]
    counts = dict(zip(shards, cluster_map(ai.route_shard, list(wanted.values()), [groups] * len(shards),
                                          [out_dir] * len(shards), shards, [near[s] for s in shards])))
    runs = ai.batches(groups, sum(counts.values(), np.zeros(len(groups), np.int64)), batch_keys)
    readers = [[s for s in shards if counts[s][run.start:run.stop].any()] for run in runs]
    scanned = cluster_map(ai.scan_batch, runs, readers, [out_dir] * len(runs), [f"{n:05d}" for n in range(len(runs))])
    captures = [[found[s] for found in scanned if s in found] for s in shards]
    outs = [storage.join(out_dir, "nearest", f"{s}.parquet") for s in shards]
    cluster_map(nearest_to_file, [out_dir] * len(shards), shards, captures, [max_days] * len(shards), outs)
    return dict(zip(shards, outs))


def nearest_to_file(out_dir: str, shard: str, captures: list[str], max_days: int, out: str) -> int:
    """`nearest_for_shard`, left in a file (the flow holds no shard's captures); returns how many."""
    table = ai.nearest_for_shard(out_dir, shard, captures, max_days)
    ai.write_parquet(table, out)
    return table.num_rows


def redirect_targets(nearest: str, out: str) -> str | None:
    """The targets of a shard's redirect captures as wanted URLs (with the time and row of the URL that
    redirected), or None when there are none."""
    table = ai.read_parquet(nearest)
    redirects = table.filter(table["redirect"])
    if not redirects.num_rows:
        return None
    ai.write_parquet(pa.table({"url": redirects["fetch_redirect"], "time": redirects["time"],
                               "origin_row": redirects["row"]}), out)
    return out


def merge_redirects(first: str, targets: str | None, second: str | None, out: str) -> int:
    """A shard's captures: its page captures, and for each redirect the capture of its target (by
    the row of the URL that redirected); returns how many."""
    columns = ["row", "time", "url", "fetch_time", "warc_filename", "warc_record_offset", "warc_record_length"]
    table = ai.read_parquet(first)
    parts = [table.filter(pc.invert(table["redirect"])).select(columns)]
    if targets and second:
        found = ai.read_parquet(second)
        origin = ai.read_parquet(targets)["origin_row"]
        found = found.set_column(found.schema.get_field_index("row"), "row", pc.take(origin, found["row"]))
        parts.append(found.filter(pc.invert(found["redirect"])).select(columns))
    merged = pa.concat_tables(parts).sort_by("row")
    ai.write_parquet(merged, out)
    return merged.num_rows


def record_blocks(captures: pa.Table, base: str, max_gap: int) -> list[tuple[str, int, int, list[int]]]:
    """The byte ranges to read: (url, start, end, the captures inside) per run of records of one WARC
    file, in offset order, neighbours less than `max_gap` bytes apart in one range."""
    files = [storage.join(base, f) for f in captures["warc_filename"].to_pylist()]
    starts = captures["warc_record_offset"].to_pylist()
    ends = [s + n for s, n in zip(starts, captures["warc_record_length"].to_pylist())]
    order = sorted(range(len(files)), key=lambda i: (files[i], starts[i]))
    paths, begins, stops = fsspec.utils.merge_offset_ranges([files[i] for i in order], [starts[i] for i in order],
                                                            [ends[i] for i in order], max_gap=max_gap,
                                                            max_block=MAX_BLOCK, sort=False)
    blocks, k = [], 0
    for path, begin, stop in zip(paths, begins, stops):
        inside = []
        while k < len(order) and files[order[k]] == path and starts[order[k]] < stop:
            inside.append(order[k])
            k += 1
        blocks.append((path, begin, stop, inside))
    return blocks


def read_blocks(blocks: list[tuple[str, int, int, list[int]]], concurrency: int) -> Iterator[tuple[int, bytes]]:
    """(block number, bytes) of each block, `concurrency` ranges in flight; a range that fails on the
    machine (a reset, 503 SlowDown) is read again with `storage.retrying`'s backoff."""
    if not blocks:
        return
    fs, _ = storage.filesystem(blocks[0][0])
    for at in range(0, len(blocks), concurrency):
        chunk = blocks[at:at + concurrency]
        paths = [storage.filesystem(url)[1] for url, *_ in chunk]
        answers = fs.cat_ranges(paths, [b[1] for b in chunk], [b[2] for b in chunk], on_error="return")
        for n, ((url, start, stop, _), data) in enumerate(zip(chunk, answers)):
            if isinstance(data, BaseException) or len(data) != stop - start:
                data = storage.retrying(url, "reading", lambda: exact_range(fs, paths[n], start, stop))
            yield at + n, data


def exact_range(fs: fsspec.AbstractFileSystem, path: str, start: int, stop: int) -> bytes:
    data = fs.cat_file(path, start=start, end=stop)
    if len(data) != stop - start:
        raise storage.ShortRead(f"{len(data)} of the {stop - start} bytes at {start:,}")
    return data


def parse_record(data: bytes, url: str, origin: str, captured: str) -> Fetched:
    """A Common Crawl response record (one gzip member) as the page of `url`."""
    record = next(iter(ArchiveIterator(io.BytesIO(data))))
    http = record.http_headers
    body = record.content_stream().read()
    status = int(http.get_statuscode()) if http else 0
    outcome = "archive_commoncrawl" if status == 200 and not is_binary(body) else "archive_bad_record"
    reason = http.statusline.partition(" ")[2] if http else ""
    return Fetched(url, outcome, status, reason, list(http.headers) if http else [], body, origin, captured)


def commoncrawl_pages(captures: pa.Table, urls: list[str], cc: dict[str, Any]) -> Iterator[Fetched]:
    """The page of each capture (`row`: its URL's index in `urls`), read by byte range."""
    rows, names, times, offsets, lengths = (captures[c].to_pylist() for c in (
        "row", "warc_filename", "fetch_time", "warc_record_offset", "warc_record_length"))
    blocks = record_blocks(captures, cc["base"], cc["max_gap"])
    for b, data in read_blocks(blocks, cc["concurrency"]):
        _, start, _, inside = blocks[b]
        for i in inside:
            record = data[offsets[i] - start:offsets[i] - start + lengths[i]]
            url = urls[rows[i]]
            try:
                yield parse_record(record, url, ai.crawl_of_path(names[i]), times[i].strftime(WARC_DATE))
            except Exception as err:  # a damaged record is bad input: counted, and Wayback is asked instead
                log.warning("archive record of %s in %s: %s: %s", url, names[i], type(err).__name__, err)
                yield Fetched(url, "archive_bad_record")


class Wayback:
    """The Wayback Machine's CDX API and raw replay, at most `requests_per_s` requests a second from
    the whole run (every fetch task, on every worker)."""

    def __init__(self, settings: dict[str, Any], fetch: dict[str, Any]):
        self.settings, self.fetch = settings, fetch
        self.client = httpx.Client(
            transport=RetryTransport(transport=httpx.HTTPTransport(), retry=retry_policy(fetch)),
            timeout=httpx.Timeout(fetch["read_timeout_s"], connect=fetch["connect_timeout_s"]),
            headers={"User-Agent": fetch["user_agent"]}, follow_redirects=True)

    def get(self, address: str, **params: Any) -> httpx.Response:
        pace(f"wayback-{urlsplit(address).netloc}", self.settings["requests_per_s"])  # the run's pace, not a task's
        return self.client.get(address, params=params or None)

    def nearest(self, url: str, when: int, max_days: int) -> str | None:
        """The timestamp of the capture of `url` nearest `when` within `max_days` with status 200
        and an HTML type, or None."""
        span = [dt.datetime.fromtimestamp(when + d * max_days * 86400, dt.timezone.utc).strftime(WAYBACK_TIME)
                for d in (-1, 1)]
        answer = self.get(self.settings["cdx"], url=url, output="json", fl="timestamp,mimetype,statuscode",
                          filter="statuscode:200", **{"from": span[0], "to": span[1]})
        answer.raise_for_status()
        rows = answer.json()[1:] if answer.content.strip() else []
        stamps = [ts for ts, mime, _ in rows if mime.startswith(HTML_TYPES)]
        return min(stamps, key=lambda ts: abs(stamp_time(ts) - when), default=None)

    def page(self, url: str, when: int, max_days: int) -> Fetched:
        """The nearest capture's page, through the raw `id_` replay (the page as archived, no banner)."""
        try:
            stamp = self.nearest(url, when, max_days)
            if stamp is None:
                return Fetched(url, "not_captured")
            resp = self.get(f"{self.settings['replay'].rstrip('/')}/{stamp}id_/{url}")
        except httpx.HTTPStatusError as err:
            return Fetched(url, f"error_wayback_{err.response.status_code}")
        except (httpx.HTTPError, OSError, ValueError) as err:
            return Fetched(url, f"error_{type(err).__name__}")
        captured = dt.datetime.fromtimestamp(stamp_time(stamp), dt.timezone.utc).strftime(WARC_DATE)
        got = Fetched(url, "archive_wayback", resp.status_code, resp.reason_phrase, list(resp.headers.items()),
                      resp.content, f"wayback:{stamp}", captured)
        if resp.status_code != 200 or len(resp.content) > self.fetch["max_bytes"] or is_binary(resp.content):
            got.outcome = "archive_bad_record"
        return got

    def close(self) -> None:
        self.client.close()


def stamp_time(stamp: str) -> int:
    return int(dt.datetime.strptime(stamp, WAYBACK_TIME).replace(tzinfo=dt.timezone.utc).timestamp())


def fetch_archived(wanted_path: str, captures_path: str | None, out: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The archived page of every wanted URL into `out`/pages.warc.gz, resuming an interrupted run:
    Common Crawl's capture when the lookup found one, else the Wayback Machine's. Counted as
    `fetch/archive_commoncrawl`, `fetch/archive_wayback` and `archive/not_captured`."""
    archive = cfg["archive"]
    wanted = ai.read_wanted(wanted_path)
    urls, times = wanted["url"].to_pylist(), wanted["time"].to_pylist()
    captures = ai.read_parquet(captures_path) if captures_path else None
    store = PageStore(Path(out))
    try:
        with tqdm(total=len(urls), initial=len(store.done), desc="archive", unit="page") as bar:
            if captures is not None:
                todo = captures.filter(pa.array([urls[r] not in store.done for r in captures["row"].to_pylist()],
                                                pa.bool_()))
                for got in commoncrawl_pages(todo, urls, archive["commoncrawl"]):
                    if got.outcome == "archive_commoncrawl":
                        add(store, got, bar)
            rest = [(u, t) for u, t in zip(urls, times) if u not in store.done]
            wayback = Wayback(archive["wayback"], cfg) if archive["wayback"]["enabled"] and rest else None
            try:
                for url, when in rest:
                    add(store, wayback.page(url, when, archive["max_days"]) if wayback else Fetched(url, "not_captured"),
                        bar)
            finally:
                if wayback:
                    wayback.close()
    finally:
        store.close()
    stats = store.outcome_counts()
    check_failures(stats, cfg["max_network_failure_share"], wanted_path)
    if stats["fetch/not_captured"]:
        stats["archive/not_captured"] = stats.pop("fetch/not_captured")
    return {"path": str(store.warc_path), "stats": dict(stats)}


def add(store: PageStore, got: Fetched, bar: tqdm) -> None:
    store.add(got)
    bar.update()
    if STOPPING.is_set():  # what is recorded so far is kept; a rerun fetches the rest
        raise Interrupted("the archive fetch was stopped: rerun to resume")
