"""Bulk lookups in a Common Crawl-shaped columnar index: ROWS captures in FILES Parquet files of one
crawl (`crawl=…/subset=warc`, SURT order, the index's column names and types), URLS wanted URLs
(half of them captured) in shards of SHARD_URLS, as the corpus cuts its URLs, looked up by the passes of `tasks/corpus/archive_index.py`
on a Dask cluster of WORKERS processes.

    python -m bench.archive ROWS=10000000 FILES=20 URLS=1000000 SHARD_URLS=50000 WORKERS=2

Prints the wall time of each pass, index rows scanned per second, the bytes read against the index
size, the peak memory of the whole process tree (Dask workers included), and checks every nearest
capture of a 10,000-URL sample against a brute-force answer.
"""
from __future__ import annotations

import datetime as dt
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

from bench.scale import TreeMemory
from tasks.corpus import archive_index as ai

CRAWL = "CC-MAIN-2019-35"
SITES = 50_000
MAX_DAYS = 30
BATCH_KEYS = 65_536  # wanted keys a scan task holds at most
START = int(dt.datetime(2019, 8, 26, tzinfo=dt.timezone.utc).timestamp())


def urls_of(site: np.ndarray, page: np.ndarray) -> pa.Array:
    """http://siteNNNNNN.com/pNNNNNNNNN: SURT order is numeric order, so rows are written sorted."""
    return pc.binary_join_element_wise("http://site", pc.utf8_lpad(pa.array(site).cast(pa.string()), 6, "0"),
                                       ".com/p", pc.utf8_lpad(pa.array(page).cast(pa.string()), 9, "0"), "")


def keys_of(site: np.ndarray, page: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise("com,site", pc.utf8_lpad(pa.array(site).cast(pa.string()), 6, "0"),
                                       ")/p", pc.utf8_lpad(pa.array(page).cast(pa.string()), 9, "0"), "")


def build_index(root: Path, rows: int, files: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`rows` captures: even page numbers only (odd ones are the absent URLs), some pages twice."""
    site = np.sort(rng.integers(0, SITES, rows))
    page = 2 * rng.integers(0, 500_000_000, rows)
    order = np.lexsort((page, site))
    site, page = site[order], page[order]
    folder = root / f"crawl={CRAWL}" / "subset=warc"
    folder.mkdir(parents=True)
    times = START + rng.integers(-40 * 86400, 40 * 86400, rows)
    for f, part in enumerate(np.array_split(np.arange(rows), files)):
        s, p = site[part], page[part]
        n = len(part)
        table = pa.table({
            "url_surtkey": keys_of(s, p), "url": urls_of(s, p),
            "fetch_time": pa.array(times[part] * 1000, pa.timestamp("ms", tz="UTC")),
            "fetch_status": pa.array(np.where(rng.random(n) < 0.9, 200, 404).astype(np.int16)),
            "content_mime_detected": pa.array(np.where(rng.random(n) < 0.95, "text/html", "application/pdf")),
            "warc_filename": pa.array([f"crawl-data/{CRAWL}/segments/{f}/warc/part.warc.gz"] * n),
            "warc_record_offset": pa.array(rng.integers(0, 1 << 30, n)),
            "warc_record_length": pa.array(rng.integers(1000, 50_000, n))}).cast(ai.CAPTURE_SCHEMA)
        pq.write_table(table, folder / f"part-{f:05d}.c000.gz.parquet", row_group_size=100_000, compression="gzip")
    return site, page


def build(work: Path, rows: int, files: int, urls: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    site, page = build_index(work / "index", rows, files, rng)
    wanted_shards(work, site, page, urls, shards, rng)


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
    best: dict[str, tuple[int, float, int]] = {}  # key -> (distance, capture time, offset)
    for path in sorted((index_root / f"crawl={CRAWL}" / "subset=warc").glob("*.parquet")):
        table = pq.read_table(path, columns=["url_surtkey", "fetch_time", "fetch_status", "content_mime_detected",
                                             "warc_record_offset"])
        table = table.filter(pc.is_in(table["url_surtkey"], value_set=pa.array(list(want))))
        for key, when, status, mime, offset in zip(*(table[c].to_pylist() for c in table.column_names)):
            candidate = (abs(int(when.timestamp()) - want[key]), when.timestamp(), offset)
            if status == 200 and mime == "text/html" and candidate[0] <= MAX_DAYS * 86400:
                best[key] = min(best.get(key, candidate), candidate)
    return {key: (offset, distance) for key, (distance, _, offset) in best.items()}


def main(args: list[str]) -> None:
    opts = {k.upper(): int(v) for k, v in (a.split("=", 1) for a in args)}
    rows, files, urls = opts.get("ROWS", 10_000_000), opts.get("FILES", 20), opts.get("URLS", 1_000_000)
    shards, workers = -(-urls // opts.get("SHARD_URLS", 50_000)), opts.get("WORKERS", 2)
    from distributed import Client, LocalCluster

    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        started = time.perf_counter()
        builder = multiprocessing.get_context("spawn").Process(target=build, args=(work, rows, files, urls, shards))
        builder.start()
        builder.join()  # in a process of its own: what it held is gone before the lookup is measured
        wanted = sorted(str(p) for p in work.glob("wanted-*.parquet"))
        index_bytes = sum(p.stat().st_size for p in (work / "index").rglob("*.parquet"))
        print(f"index: {rows:,} rows in {files} files ({index_bytes / 2**20:,.0f} MiB), {urls:,} wanted URLs in "
              f"{shards} shards; built in {time.perf_counter() - started:.1f} s", flush=True)
        memory = TreeMemory(psutil.Process(os.getpid()))
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            before = bytes_read()
            timings, nearest = lookup(client, str(work / "index"), wanted, str(work / "out"))
            read = bytes_read() - before
        memory.close()
        total = sum(timings.values())
        print("\n| pass | seconds |\n|---|---|" + "".join(f"\n| {k} | {v:.1f} |" for k, v in timings.items()))
        print(f"\n{urls:,} URLs against {rows:,} index rows in **{total:.1f} s** on {workers} workers: "
              f"{rows / total:,.0f} index rows/s; found {sum(n for _, n in nearest):,} nearest captures")
        print(f"peak memory of the process tree (PSS): {memory.peak_tree / 2**20:,.0f} MiB; "
              f"bytes read {read / 2**20:,.0f} MiB (index, wanted and pass files) against an index of "
              f"{index_bytes / 2**20:,.0f} MiB")
        check_sample(work, wanted, pq.read_table(nearest[0][0]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def lookup(client, index_root: str, wanted: list[str], out: str) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """The passes of `archive_index`, each a Dask map, timed."""
    timings, t = {}, time.perf_counter()
    groups = ai.row_groups(ai.index_files(index_root, ai.crawls_near([CRAWL], [START], MAX_DAYS)))
    timings["1. key ranges of the index's row groups (footers)"] = time.perf_counter() - t
    t = time.perf_counter()
    shards = [f"{i:05d}" for i in range(len(wanted))]
    counts = dict(zip(shards, client.gather(client.map(ai.route_shard, wanted, [groups] * len(wanted),
                                                       [out] * len(wanted), shards, pure=False))))
    timings["2. SURT keys of the wanted URLs, routed to row groups"] = time.perf_counter() - t
    t = time.perf_counter()
    runs = ai.batches(groups, sum(counts.values()), BATCH_KEYS)
    readers = [[s for s in shards if counts[s][run.start:run.stop].any()] for run in runs]
    scanned = client.gather(client.map(ai.scan_batch, runs, readers, [out] * len(runs),
                                       [f"{n:05d}" for n in range(len(runs))], pure=False))
    timings[f"3. index scanned, {len(runs)} runs of row groups"] = time.perf_counter() - t
    t = time.perf_counter()
    captures = [[s[shard] for s in scanned if shard in s] for shard in shards]
    nearest = client.gather(client.map(nearest_to_file, [out] * len(wanted), shards, captures,
                                       [MAX_DAYS] * len(wanted), pure=False))
    timings["4. nearest capture per URL"] = time.perf_counter() - t
    return timings, nearest


def nearest_to_file(out: str, shard: str, captures: list[str], max_days: int) -> tuple[str, int]:
    """Pass 4 with its result left in a file, as the corpus would: the caller holds no shard's captures."""
    table = ai.nearest_for_shard(out, shard, captures, max_days)
    path = f"{out}/nearest/{shard}.parquet"
    ai.write_parquet(table.select(["row", "key", "warc_record_offset", "distance_s"]), path)
    return path, table.num_rows


def check_sample(work: Path, wanted: list[str], ours: pa.Table, sample: int = 10_000) -> None:
    """The nearest captures of `sample` wanted URLs of the first shard (`ours`) against a brute-force scan."""
    table = pq.read_table(wanted[0])
    rows = sorted(random.Random(0).sample(range(table.num_rows), min(sample, table.num_rows)))
    brute = brute_force(work / "index", table.take(rows))
    picked = set(rows)
    ours = {k: (o, d) for r, k, o, d in zip(*(ours[c].to_pylist() for c in ("row", "key", "warc_record_offset",
                                                                             "distance_s"))) if r in picked}
    ok = ours == brute
    print(f"brute force on {len(rows):,} URLs: {len(brute):,} with a capture; ours "
          f"{'equal' if ok else 'DIFFER'} ({len(ours):,} found)")
    if not ok:
        sys.exit(1)


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
