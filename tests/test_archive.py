"""Pages from web archives: a Common Crawl-shaped archive and a Wayback-shaped CDX API and replay,
written by `sample.archive` and served on loopback (or from moto's S3 behind the fault proxy)."""
from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from distributed import Client, LocalCluster
from moto import server as moto_server
from warcio.archiveiterator import ArchiveIterator

from flows.common import load_config
from sample.archive import Capture, write_archive
from sample.web import archive_endpoints, make_archive_handler, serving
from tasks.cluster import pace
from tasks.corpus import archive
from tasks.corpus.archive_index import write_parquet
from tasks.corpus.document import Document, write_documents
from tasks.corpus.shards import ShardPlan, shard_pages
from tests.faultproxy import FaultProxy

MAX_DAYS = 60


def when(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)


def page(name: str) -> str:
    return f"<html><body><article><p>{name}: the story as it was archived.</p></article></body></html>"


# url -> submission day, and the captures the archive holds
WANTED = {"http://a.example/story": "2019-06-01", "http://b.example/late": "2019-06-01",
          "http://c.example/filters": "2019-06-01", "http://d.example/old-slug": "2019-06-01",
          "http://e.example/nowhere": "2019-06-01", "http://f.example/2011-story": "2011-03-01",
          "http://g.example/wayback-only": "2019-06-01"}
CAPTURES = [
    Capture("http://a.example/story", when("2019-06-03"), page("A near")),
    Capture("http://a.example/story", when("2019-07-20"), page("A far")),          # another crawl, farther
    Capture("http://b.example/late", when("2020-06-01"), page("B late")),           # outside max_days
    Capture("http://c.example/filters", when("2019-06-02"), status=404),            # no page
    Capture("http://c.example/filters", when("2019-06-02T12:00"), page("C pdf"), mime="application/pdf"),
    Capture("http://c.example/filters", when("2019-06-20"), page("C html")),
    Capture("http://d.example/old-slug", when("2019-06-05"), status=301, redirect="http://d.example/new-slug"),
    Capture("http://d.example/new-slug", when("2019-06-05T00:01"), page("D moved")),
    Capture("http://f.example/2011-story", when("2019-06-05"), page("F in 2019")),  # years after its submission
    Capture("http://f.example/2011-story", when("2011-03-02"), page("F 2011"), wayback=True),
    Capture("http://g.example/wayback-only", when("2019-06-04"), page("G wayback"), wayback=True),
]


def settings(endpoints: dict) -> dict:
    fetch = load_config()["corpus"]["fetch"]
    fetch["archive"]["max_days"] = MAX_DAYS
    fetch["archive"]["wayback"]["requests_per_s"] = 100  # loopback: the public API's limit is not ours to keep
    fetch["archive"] = archive.with_endpoints(fetch["archive"], endpoints)
    return fetch


def write_wanted(path: Path) -> str:
    write_parquet(pa.table({"url": list(WANTED), "time": [int(when(d).timestamp()) for d in WANTED.values()]}),
                  str(path))
    return str(path)


def pages_of(warc: Path) -> dict[str, tuple[str, str, str]]:
    """url -> (body, origin, capture time) of each response record."""
    with open(warc, "rb") as fh:
        return {r.rec_headers.get_header("WARC-Target-URI"): (r.content_stream().read().decode(),
                                                              r.rec_headers.get_header("OpenGPT2-Origin"),
                                                              r.rec_headers.get_header("WARC-Date"))
                for r in ArchiveIterator(fh) if r.rec_type == "response"}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """The wanted URLs looked up and fetched once, from the archive served on loopback."""
    tmp = tmp_path_factory.mktemp("archive")
    write_archive(tmp / "web-archive", CAPTURES)
    wanted = write_wanted(tmp / "wanted.parquet")
    with serving(make_archive_handler(tmp / "web-archive")) as base:
        cfg = settings(archive_endpoints(base))
        captures = archive.lookup({"00000": wanted}, str(tmp / "lookup"), cfg["archive"])
        result = archive.fetch_archived(wanted, captures["00000"], str(tmp / "pages"), cfg)
    return tmp, result, pages_of(tmp / "pages" / "pages.warc.gz")


def test_each_url_gets_the_page_captured_nearest_its_submission(fetched):
    _, _, pages = fetched
    assert "A near" in pages["http://a.example/story"][0]


def test_captures_without_a_page_are_passed_over(fetched):
    _, _, pages = fetched
    assert "C html" in pages["http://c.example/filters"][0]  # not the nearer 404, nor the nearer PDF


def test_a_redirect_capture_is_followed_to_its_targets_capture(fetched):
    _, _, pages = fetched
    body, origin, _ = pages["http://d.example/old-slug"]
    assert "D moved" in body and origin == "CC-MAIN-2019-23"


def test_captures_outside_max_days_and_urls_in_neither_archive_are_counted_not_captured(fetched):
    _, result, pages = fetched
    assert "http://b.example/late" not in pages and "http://e.example/nowhere" not in pages
    assert result["stats"] == {"fetch/archive_commoncrawl": 3, "fetch/archive_wayback": 2, "archive/not_captured": 2}


def test_submissions_before_common_crawls_index_and_urls_it_lacks_come_from_the_wayback_machine(fetched):
    _, _, pages = fetched
    assert pages["http://f.example/2011-story"][:2] == (page("F 2011"), "wayback:20110302000000")
    assert pages["http://g.example/wayback-only"][1] == "wayback:20190604000000"


def test_each_page_keeps_its_origin_and_capture_time_into_the_documents(fetched):
    tmp, _, pages = fetched
    assert pages["http://a.example/story"][1:] == ("CC-MAIN-2019-23", "2019-06-03T00:00:00Z")
    urls = tmp / "urls.jsonl.zst"
    write_documents(urls, [Document(id=str(i), url=u) for i, u in enumerate(WANTED)])
    docs = {d.url: d for d in shard_pages(ShardPlan("00000", str(tmp / "pages" / "pages.warc.gz"), urls=str(urls)),
                                          stats={})}
    assert (docs["http://a.example/story"].origin, docs["http://a.example/story"].captured) == (
        "CC-MAIN-2019-23", "2019-06-03T00:00:00Z")
    assert docs["http://g.example/wayback-only"].origin == "wayback:20190604000000"


def test_a_killed_archive_fetch_resumes_without_fetching_a_page_twice(fetched, tmp_path):
    tmp, result, _ = fetched
    with serving(make_archive_handler(tmp / "web-archive")) as base:
        again = archive.fetch_archived(str(tmp / "wanted.parquet"), str(tmp / "lookup" / "captures" / "00000.parquet"),
                                       str(tmp / "pages"), settings(archive_endpoints(base)))
    assert again["stats"] == result["stats"]
    assert len(pages_of(tmp / "pages" / "pages.warc.gz")) == 5


@pytest.fixture
def s3_behind_fault_proxy(tmp_path, monkeypatch):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultProxy(f"http://{host}:{port}", rate=0.5, seed=3, kinds=("slowdown",))
    for key, value in {"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        yield proxy
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        proxy.close()
        server.stop()


def test_records_read_from_s3_back_off_on_slowdown_and_all_arrive(s3_behind_fault_proxy, tmp_path):
    write_archive(tmp_path / "web-archive", CAPTURES)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("commoncrawl")
    fs.put(str(tmp_path / "web-archive") + "/", "commoncrawl/", recursive=True)
    cfg = settings({"commoncrawl": {"base": "s3://commoncrawl/", "collinfo": "s3://commoncrawl/collinfo.json"}})
    cfg["archive"]["wayback"]["enabled"] = False
    cfg["archive"]["commoncrawl"]["max_gap"] = 0  # a request per record: more requests for the proxy to fault
    wanted = write_wanted(tmp_path / "wanted.parquet")
    captures = archive.lookup({"00000": wanted}, str(tmp_path / "lookup"), cfg["archive"])
    result = archive.fetch_archived(wanted, captures["00000"], str(tmp_path / "pages"), cfg)
    assert s3_behind_fault_proxy.faults["slowdown", "get_warc"] >= 1
    assert result["stats"]["fetch/archive_commoncrawl"] == 3
    assert "A near" in pages_of(tmp_path / "pages" / "pages.warc.gz")["http://a.example/story"][0]


def calls_paced(name: str, per_s: float, n: int) -> list[float]:
    times = []
    for _ in range(n):
        pace(name, per_s)
        times.append(time.time())
    return times


def test_the_wayback_pace_holds_for_the_whole_run_across_threads_and_dask_workers():
    with ThreadPoolExecutor(2) as threads:
        local = sorted(t for part in threads.map(calls_paced, ["local-test"] * 2, [20] * 2, [5] * 2) for t in part)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        futures = client.map(calls_paced, ["dask-test"] * 2, [20] * 2, [5] * 2, pure=False)
        calls = client.gather(futures)
        workers = {w for w in client.who_has(futures).values() for w in w}
        on_cluster = sorted(t for part in calls for t in part)
    for times in (local, on_cluster):
        assert min(b - a for a, b in zip(times, times[1:])) >= 0.05 - 0.005  # 20 a second, from both together
    assert len(workers) == 2
