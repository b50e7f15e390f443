"""Bulk lookups in an index laid out like Common Crawl's columnar one (hive partitions, SURT order)."""
from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.corpus import archive_index
from tasks.corpus.archive_index import (CAPTURE_SCHEMA, batches, crawl_start, crawls_near, file_row_groups,
                                        index_files, nearest_captures, route_keys, scan_index_file, surt_key,
                                        wanted_table)

DAY = 86400


def epoch(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp())


def row_groups(files: list[str]) -> list[archive_index.RowGroup]:
    return [g for path in files for g in file_row_groups(path)]


def write_index(root: Path, crawl: str, rows: list[tuple], files: int = 2, row_group_size: int = 2) -> None:
    """Rows (url, day, status, mime) as one crawl's `subset=warc` files, cut in key order, listed in the
    crawl's `cc-index-table.paths.gz` as Common Crawl lists them."""
    records = sorted(({"url_surtkey": surt_key(u), "url": u, "fetch_time": dt.datetime.fromisoformat(d).replace(
        tzinfo=dt.timezone.utc), "fetch_status": s, "content_mime_detected": m, "warc_filename": f"{crawl}/{u[-1]}.warc.gz",
        "warc_record_offset": 100 * i, "warc_record_length": 50} for i, (u, d, s, m) in enumerate(rows)),
        key=lambda r: (r["url_surtkey"], r["fetch_time"]))
    folder = f"cc-index/table/cc-main/warc/crawl={crawl}/subset=warc"
    (root / folder).mkdir(parents=True)
    per_file = -(-len(records) // files)
    for f in range(files):
        part = records[f * per_file:(f + 1) * per_file]
        pq.write_table(pa.Table.from_pylist(part, schema=CAPTURE_SCHEMA), root / folder / f"part-{f:05d}.parquet",
                       row_group_size=row_group_size)
    listing = root / "crawl-data" / crawl / "cc-index-table.paths.gz"
    listing.parent.mkdir(parents=True)
    listing.write_bytes(gzip.compress("".join(f"{folder}/part-{f:05d}.parquet\n" for f in range(files)).encode()))


def test_keys_are_written_as_common_crawls_index_sorts_them():
    assert surt_key("http://www.Example.com:80/Path/a.html?b=2&a=1#top") == "com,example)/path/a.html?a=1&b=2"
    assert surt_key("https://news.bbc.co.uk/2/hi/uk_news/123.stm") == "uk,co,bbc,news)/2/hi/uk_news/123.stm"
    assert surt_key("http://example.com") == "com,example)/"
    # a row of Common Crawl's own index (CC-MAIN-2024-22, shown in its "whirlwind tour" of the datasets)
    assert surt_key("https://an.wikipedia.org/wiki/Escopete") == "org,wikipedia,an)/wiki/escopete"


def test_a_crawl_id_names_the_week_it_began_and_only_crawls_near_the_dates_are_read():
    assert crawl_start("CC-MAIN-2019-35") == dt.datetime(2019, 8, 26, tzinfo=dt.timezone.utc)
    with pytest.raises(ValueError, match="not a Common Crawl crawl id"):
        crawl_start("CC-MAIN-2019")
    crawls = ["CC-MAIN-2013-20", "CC-MAIN-2019-30", "CC-MAIN-2019-35", "CC-MAIN-2020-05"]
    assert crawls_near(crawls, [epoch("2019-08-20")], 30) == ["CC-MAIN-2019-30", "CC-MAIN-2019-35"]


@pytest.fixture
def index(tmp_path):
    html = "text/html"
    write_index(tmp_path, "CC-MAIN-2019-35", [
        ("http://a.example.com/story", "2019-08-27", 200, html),
        ("http://a.example.com/story", "2019-09-20", 200, html),      # farther from the submission
        ("http://b.example.com/gone", "2019-08-28", 404, html),       # a status no page comes from
        ("http://c.example.com/file.pdf", "2019-08-28", 200, "application/pdf"),
        ("http://d.example.com/late", "2019-12-30", 200, html),       # past max_days
        ("http://e.example.com/x", "2019-08-29", 200, html),
        ("http://f.example.com/y", "2019-08-29", 200, html),
        ("http://g.example.com/z", "2019-08-29", 200, html),
    ])
    return tmp_path


def test_each_wanted_url_gets_its_nearest_usable_capture_within_max_days(index):
    urls = ["http://a.example.com/story", "http://b.example.com/gone", "http://c.example.com/file.pdf",
            "http://d.example.com/late", "http://never.example.org/", "http://www.g.example.com/z"]
    wanted = wanted_table(urls, [epoch("2019-08-26")] * len(urls))
    groups = row_groups(index_files(str(index), ["CC-MAIN-2019-35"]))
    assert all(a.last < b.first for a, b in zip(groups, groups[1:]))  # row groups follow each other in key order
    routed, counts = route_keys(wanted["key"].unique(), groups)
    def keys_of(run: archive_index.Batch) -> list[str]:
        inside = pc.and_(pc.greater_equal(routed["group"], run.start), pc.less(routed["group"], run.stop))
        return routed.filter(inside)["key"].to_pylist()

    captures = pa.concat_tables([scan_index_file(run.path, keys_of(run), run.numbers)
                                 for run in batches(groups, counts, batch_keys=2)])
    found = nearest_captures(wanted, captures, max_days=60)
    by_url = {urls[r]: (t, o) for r, t, o in zip(found["row"].to_pylist(), found["fetch_time"].to_pylist(),
                                                  found["warc_record_offset"].to_pylist())}
    assert set(by_url) == {"http://a.example.com/story", "http://www.g.example.com/z"}  # www: the same key
    assert by_url["http://a.example.com/story"][0].date() == dt.date(2019, 8, 27)  # the nearer of two captures


def test_only_the_row_groups_that_may_hold_a_wanted_key_are_read(index, monkeypatch):
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: read.append(g) or real(self, g, **kw))
    [first, *_] = index_files(str(index), ["CC-MAIN-2019-35"])
    groups = archive_index.row_group_ranges(pq.ParquetFile(first).metadata)
    assert len(groups) > 1
    found = scan_index_file(first, [groups[-1][0]])  # a key of the last row group alone
    assert read == [len(groups) - 1] and found.num_rows >= 1


def test_row_groups_are_cut_into_runs_of_one_file_with_bounded_keys():
    groups = [archive_index.RowGroup(path, n, "", "") for path in ("a", "b") for n in range(3)]
    cut = batches(groups, archive_index.np.array([2, 2, 5, 0, 1, 1]), batch_keys=4)
    assert [(b.path, b.numbers) for b in cut] == [("a", (0, 1)), ("a", (2,)), ("b", (1, 2))]


def test_the_passes_over_shards_and_batches_find_what_one_lookup_finds(index, tmp_path):
    urls = ["http://a.example.com/story", "http://e.example.com/x", "http://f.example.com/y", "http://nope.example/"]
    times = [epoch("2019-08-26")] * len(urls)
    shards = {}
    for name, part in {"00000": slice(0, 2), "00001": slice(2, 4)}.items():
        shards[name] = str(tmp_path / f"wanted-{name}.parquet")
        pq.write_table(pa.table({"url": urls[part], "time": times[part]}), shards[name])
    out = str(tmp_path / "out")
    groups = row_groups(index_files(str(index), ["CC-MAIN-2019-35"]))
    counts = {name: archive_index.route_shard(path, groups, out, name) for name, path in shards.items()}
    runs = batches(groups, sum(counts.values()), batch_keys=1)
    assert len(runs) == 3  # one key a run: e, f and a each in a run of their own
    scanned = [archive_index.scan_batch(b, [s for s in shards if counts[s][b.start:b.stop].any()], out, f"{n:05d}")
               for n, b in enumerate(runs)]
    found = {name: archive_index.nearest_for_shard(out, name, [s[name] for s in scanned if name in s], 60)
             for name in shards}
    assert {name: table["url"].to_pylist() for name, table in found.items()} == {
        "00000": ["http://a.example.com/story", "http://e.example.com/x"], "00001": ["http://f.example.com/y"]}
    keys = sorted(map(surt_key, urls))
    whole = nearest_captures(wanted_table(urls, times),
                             pa.concat_tables([scan_index_file(path, keys) for path in {g.path for g in groups}]), 60)
    assert sorted(whole["url"].to_pylist()) == sorted(u for t in found.values() for u in t["url"].to_pylist())


def test_the_benchmark_finds_every_nearest_capture_the_brute_force_finds(capsys):
    from bench.archive import main

    main(["ROWS=20000", "FILES=3", "URLS=2000", "SHARD_URLS=1000", "WORKERS=1", "RECORDS=200"])
    out = capsys.readouterr().out
    assert "ours equal" in out and "2,000 URLs against 20,000 index rows" in out
