"""Bulk lookups in a Common Crawl-shaped archive, through the code `corpus.fetch.mode=archive` runs:
ROWS captures in FILES Parquet files of one crawl (the index's layout, column names and types, SURT
order, listed by the crawl's `cc-index-table.paths.gz`), URLS wanted URLs (half of them captured) in
shards of SHARD_URLS, as the corpus cuts its URLs, looked up by `tasks.corpus.archive.lookup` on a
Dask cluster of WORKERS processes; then the records of the first shard's captures read by byte range
from RECORDS real WARC records.

    python -m bench.archive ROWS=10000000 FILES=20 URLS=1000000 SHARD_URLS=50000 WORKERS=2 SMALL=100000

Prints the wall time, index rows scanned per second, the bytes read against the index size, the peak
memory of the whole process tree (Dask workers included) beside that of the same lookup for the
first SMALL URLs (the same shards, on a cluster of its own), checks every nearest
capture of a 10,000-URL sample against a brute-force answer, and prints beside it the per-URL CDX
API's rate, measured on 1,000 lookups against a CDX endpoint on loopback, projected to 1M URLs.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from bench.scale import TreeMemory
from flows.common import load_config
from sample.archive import CDX_FIELDS
from sample.web import archive_endpoints, make_archive_handler, serving
from tasks.cluster import attached
from tasks import storage
from tasks.corpus import archive
from tasks.corpus import archive_index as ai

CRAWL = "CC-MAIN-2019-35"
SITES = 50_000
MAX_DAYS = 30
BATCH_KEYS = 65_536  # wanted keys a scan task holds at most
INDEX = f"cc-index/table/cc-main/warc/crawl={CRAWL}/subset=warc"
WARC = f"crawl-data/{CRAWL}/segments/0/warc/{CRAWL}-bench.warc.gz"
CDX_LOOKUPS = 1_000
START = int(dt.datetime(2019, 8, 26, tzinfo=dt.timezone.utc).timestamp())


def urls_of(site: np.ndarray, page: np.ndarray) -> pa.Array:
    """http://siteNNNNNN.com/pNNNNNNNNN: SURT order is numeric order, so rows are written sorted."""
    return pc.binary_join_element_wise("http://site", pc.utf8_lpad(pa.array(site).cast(pa.string()), 6, "0"),
                                       ".com/p", pc.utf8_lpad(pa.array(page).cast(pa.string()), 9, "0"), "")


def keys_of(site: np.ndarray, page: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("com,site", pc.utf8_lpad(pa.array(site).cast(pa.string()), 6, "0"),
                                       ")/p", pc.utf8_lpad(pa.array(page).cast(pa.string()), 9, "0"), "")


def build_index(root: Path, rows: int, files: int, records: list[tuple[int, int]],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rows` captures: even page numbers only (odd ones are the absent URLs), some pages twice, each
    pointing at one of the WARC `records` (offset, length) in turn."""
    site = np.sort(rng.integers(0, SITES, rows))
    page = 2 * rng.integers(0, 500_000_000, rows)
    order = np.lexsort((page, site))
    site, page = site[order], page[order]
    (root / INDEX).mkdir(parents=True)
    times = START + rng.integers(-40 * 86400, 40 * 86400, rows)
    offsets, lengths = (np.array(column, dtype=np.int64) for column in zip(*records))
    names = []
    for f, part in enumerate(np.array_split(np.arange(rows), files)):
        s, p = site[part], page[part]
        n = len(part)
        table = pa.table({
            "url_surtkey": keys_of(s, p), "url": urls_of(s, p),
            "fetch_time": pa.array(times[part] * 1000, pa.timestamp("ms", tz="UTC")),
            "fetch_status": pa.array(np.where(rng.random(n) < 0.9, 200, 404).astype(np.int16)),
            "content_mime_detected": pa.array(np.where(rng.random(n) < 0.95, "text/html", "application/pdf")),
            "warc_filename": pa.array([WARC] * n),
            "warc_record_offset": pa.array(offsets[part % len(records)]),
            "warc_record_length": pa.array(lengths[part % len(records)]),
            "fetch_redirect": pa.nulls(n, pa.string())}).cast(ai.CAPTURE_SCHEMA)
        names.append(f"{INDEX}/part-{f:05d}.c000.gz.parquet")
        pq.write_table(table, root / names[-1], row_group_size=100_000, compression="gzip")
    listing = root / "crawl-data" / CRAWL / "cc-index-table.paths.gz"
    listing.write_bytes(gzip.compress("\n".join(names).encode()))
    (root / "collinfo.json").write_text(json.dumps([{"id": CRAWL}]))
    return site, page


def build_warc(root: Path, records: int) -> list[tuple[int, int]]:
    """`records` WARC response records of news-sized pages (about 8 KB of HTML each): (offset, length) of each."""
    path = root / WARC
    path.parent.mkdir(parents=True, exist_ok=True)
    words = np.array("the council said new bus lanes would open in the spring after years of delay and debate".split())
    rng = np.random.default_rng(1)
    spans = []
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        for i in range(records):
            text = " ".join(words[rng.integers(0, len(words), 1400)])
            html = f"<html><head><title>Story {i}</title></head><body><p>{text}</p></body></html>".encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            start = out.tell()
            writer.write_record(writer.create_warc_record(f"http://example.com/{i}", "response",
                                                          payload=io.BytesIO(html), http_headers=http))
            spans.append((start, out.tell() - start))
    return spans


def build(work: Path, rows: int, files: int, urls: int, shards: int, records: int) -> None:
    rng = np.random.default_rng(0)
    site, page = build_index(work / "cc", rows, files, build_warc(work / "cc", records), rng)
    wanted_shards(work, site, page, urls, shards, rng)
    write_cdx(work / "cc", site[:CDX_LOOKUPS], page[:CDX_LOOKUPS])


def write_cdx(root: Path, site: np.ndarray, page: np.ndarray) -> None:
    """A Wayback-shaped CDX of one capture per URL, for the per-URL lookups."""
    stamp = dt.datetime.fromtimestamp(START, dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    rows = [[k, stamp, u, "text/html", "200", "-", "0"] for k, u in zip(keys_of(site, page).to_pylist(),
                                                                        urls_of(site, page).to_pylist())]
    (root / "wayback").mkdir(parents=True, exist_ok=True)
    (root / "wayback" / "cdx.json").write_text(json.dumps([CDX_FIELDS, *rows]))


def wanted_shards(out: Path, site: np.ndarray, page: np.ndarray, urls: int, shards: int,
                  rng: np.random.Generator) -> list[str]:
    """Half the wanted URLs captured in the index, half not (odd pages), in shards of URL and time."""
    present = rng.choice(len(site), urls // 2, replace=False)
    absent_site, absent_page = rng.integers(0, SITES, urls - urls // 2), 2 * rng.integers(0, 500_000_000, urls - urls // 2) + 1
    all_site = np.concatenate([site[present], absent_site])
    all_page = np.concatenate([page[present], absent_page])
    shuffle = rng.permutation(urls)
    table = pa.table({"url": urls_of(all_site[shuffle], all_page[shuffle]),
                      "time": START + rng.integers(-20 * 86400, 20 * 86400, urls)})
    paths = []
    for s, part in enumerate(np.array_split(np.arange(urls), shards)):
        paths.append(str(out / f"wanted-{s:05d}.parquet"))
        pq.write_table(table.take(part), paths[-1])
    return paths


def brute_force(index_root: Path, wanted: pa.Table) -> dict[str, tuple[int, int]]:
    """The nearest usable capture of each wanted URL, by reading every row of the index."""
    want = {ai.surt_key(u): t for u, t in zip(wanted["url"].to_pylist(), wanted["time"].to_pylist())}
    best: dict[str, tuple[int, float]] = {}  # key -> (distance, capture time)
    for path in sorted((index_root / INDEX).glob("*.parquet")):
        table = pq.read_table(path, columns=["url_surtkey", "fetch_time", "fetch_status", "content_mime_detected"])
        table = table.filter(pc.is_in(table["url_surtkey"], value_set=pa.array(list(want))))
        for key, when, status, mime in zip(*(table[c].to_pylist() for c in table.column_names)):
            candidate = (abs(int(when.timestamp()) - want[key]), when.timestamp())
            if status == 200 and mime == "text/html" and candidate[0] <= MAX_DAYS * 86400:
                best[key] = min(best.get(key, candidate), candidate)
    return {key: (when, distance) for key, (distance, when) in best.items()}


def main(args: list[str]) -> None:
    opts = {k.upper(): int(v) for k, v in (a.split("=", 1) for a in args)}
    rows, files, urls = opts.get("ROWS", 10_000_000), opts.get("FILES", 20), opts.get("URLS", 1_000_000)
    shards, workers = -(-urls // opts.get("SHARD_URLS", 50_000)), opts.get("WORKERS", 2)
    records = opts.get("RECORDS", 20_000)

    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        started = time.perf_counter()
        builder = multiprocessing.get_context("spawn").Process(target=build,
                                                               args=(work, rows, files, urls, shards, records))
        builder.start()
        builder.join()  # in a process of its own: what it held is gone before the lookup is measured
        wanted = {f"{i:05d}": str(p) for i, p in enumerate(sorted(work.glob("wanted-*.parquet")))}
        index_bytes = sum(p.stat().st_size for p in (work / "cc").rglob("*.parquet"))
        print(f"index: {rows:,} rows in {files} files ({index_bytes / 2**20:,.0f} MiB), {urls:,} wanted URLs in "
              f"{shards} shards; built in {time.perf_counter() - started:.1f} s", flush=True)
        settings = fetch_settings(str(work / "cc"))
        shard_urls = -(-urls // shards)
        small = dict(list(wanted.items())[:-(-opts.get("SMALL", 100_000) // shard_urls)])
        if len(small) < len(wanted):  # the first shards alone, the same size each: does memory grow with URLs?
            _, small_took, _, small_peak = measured_lookup(small, str(work / "out-small"), settings, workers)
        captures, took, read, peak = measured_lookup(wanted, str(work / "out"), settings, workers)
        found = [pq.read_metadata(path).num_rows for path in captures.values()]
        print(f"\n{urls:,} URLs against {rows:,} index rows in **{took:.1f} s** on {workers} workers: "
              f"{rows / took:,.0f} index rows/s; found {sum(found):,} nearest captures")
        print(f"peak memory of the process tree (PSS): {peak / 2**20:,.0f} MiB; bytes read {read / 2**20:,.0f} MiB "
              f"(index, wanted and pass files) against an index of {index_bytes / 2**20:,.0f} MiB")
        if len(small) < len(wanted):
            print(f"the same lookup for the first {len(small) * shard_urls:,} URLs: {small_took:.1f} s, peak "
                  f"{small_peak / 2**20:,.0f} MiB (x{peak / small_peak:.2f} for {len(wanted) / len(small):.0f}x the URLs)")
        check(work, wanted["00000"], captures)
        cdx_rate(work / "cc", settings)
        fetch_rate(work, wanted["00000"], captures["00000"], settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measured_lookup(wanted: dict[str, str], out: str, settings: dict, workers: int) -> tuple[dict, float, int, int]:
    """`archive.lookup` on a fresh Dask cluster: (captures, seconds, bytes read, peak PSS of the process tree)."""
    from distributed import Client, LocalCluster

    memory = TreeMemory(psutil.Process(os.getpid()))
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client, attached(client, storage.settings()):
        before, t = bytes_read(), time.perf_counter()
        captures = archive.lookup(wanted, out, settings["archive"])
        took, read = time.perf_counter() - t, bytes_read() - before
    memory.close()
    return captures, took, read, memory.peak_tree


def fetch_settings(base: str) -> dict:
    """`corpus.fetch` for the synthetic archive at `base` (no Wayback fallback: every URL is looked up once)."""
    fetch = load_config(["corpus=pushshift"])["corpus"]["fetch"]  # the public archives' pace, not the demo's loopback one
    fetch["archive"]["max_days"] = MAX_DAYS
    fetch["archive"]["commoncrawl"].update(base=base, collinfo=f"{base}/collinfo.json", batch_keys=BATCH_KEYS)
    fetch["archive"]["wayback"]["enabled"] = False
    return fetch


def check(work: Path, wanted: str, captures: dict[str, str], sample: int = 10_000) -> None:
    """No absent URL found (odd pages), and the nearest captures of `sample` wanted URLs of the first
    shard against a brute-force scan."""
    absent = sum(pc.sum(pc.match_substring_regex(pq.read_table(p, columns=["url"])["url"], r"[13579]$")).as_py() or 0
                 for p in captures.values())
    table = pq.read_table(wanted)
    rows = sorted(random.Random(0).sample(range(table.num_rows), min(sample, table.num_rows)))
    brute = brute_force(work / "cc", table.take(rows))
    ours = pq.read_table(captures["00000"])
    keys = [ai.surt_key(u) for u in table["url"].to_pylist()]
    picked = set(rows)
    seconds = pc.cast(pc.cast(ours["fetch_time"], pa.timestamp("s", tz="UTC")), pa.int64()).to_pylist()
    mine = {keys[r]: (f, abs(s - t)) for r, f, s, t in zip(ours["row"].to_pylist(), ours["fetch_time"].to_pylist(),
                                                           seconds, ours["time"].to_pylist()) if r in picked}
    mine = {k: (f.timestamp(), d) for k, (f, d) in mine.items()}
    ok = mine == brute and not absent
    print(f"brute force on {len(rows):,} URLs: {len(brute):,} with a capture; ours "
          f"{'equal' if mine == brute else 'DIFFER'} ({len(mine):,} found); absent URLs found: {absent}")
    if not ok:
        sys.exit(1)


def cdx_rate(root: Path, settings: dict) -> None:
    """1,000 lookups through the per-URL CDX API (served on loopback, unthrottled), projected to 1M URLs."""
    table = json.loads((root / "wayback" / "cdx.json").read_text())[1:]
    with serving(make_archive_handler(root)) as base:
        wayback = archive.Wayback({**settings["archive"]["wayback"], **archive_endpoints(base)["wayback"],
                                   "requests_per_s": 1e9}, settings)
        t = time.perf_counter()
        found = sum(wayback.nearest(row[2], START, MAX_DAYS) is not None for row in table)
        took = time.perf_counter() - t
        wayback.close()
    per_s, limit = len(table) / took, settings["archive"]["wayback"]["requests_per_s"]
    print(f"per-URL CDX lookups on loopback: {len(table):,} in {took:.1f} s ({per_s:,.0f}/s, {found:,} found): "
          f"projected for 1M URLs {1e6 / per_s / 3600:,.1f} h at that rate, {1e6 / limit / 86400:,.1f} days at the "
          f"Wayback Machine's rate limit ({limit}/s), against the bulk lookup above")


def fetch_rate(work: Path, wanted: str, captures: str, settings: dict) -> None:
    """The first shard's captures read by byte range from the local store, as the corpus reads them."""
    t = time.perf_counter()
    result = archive.fetch_archived(wanted, captures, str(work / "fetched"), settings)
    took = time.perf_counter() - t
    got = result["stats"].get("fetch/archive_commoncrawl", 0)
    print(f"records fetched by byte range from the local store: {got:,} in {took:.1f} s "
          f"({got / took:,.0f} records/s, written to the shard's pages.warc.gz)")


def bytes_read() -> int:
    """Bytes this process and its children (the Dask workers) have read from files, cached or not."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    total = 0
    for proc in procs:
        try:
            total += proc.io_counters().read_chars
        except psutil.NoSuchProcess:
            continue
    return total


if __name__ == "__main__":
    main(sys.argv[1:])
