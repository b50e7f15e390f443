import json
import os
import signal
import subprocess
import sys
import socket
import threading
import time
from collections import Counter
from http.server import ThreadingHTTPServer

import pytest
from warcio.archiveiterator import ArchiveIterator

from flows.common import load_config
from tasks.corpus.document import Document, write_documents
from tasks.corpus.extract import Extract
from tasks.corpus.warc import warc_records
from tasks.corpus.shards import ShardPlan, shard_pages
from tasks.corpus.fetch import FetchFailed, PageStore, fetch_pages
from tasks.corpus.prefect_tasks import fetch_task
from tests import webserver
from tests.webserver import ARTICLE, TestWeb

FETCH = {**load_config()["corpus"]["fetch"], "retries": 2, "backoff_s": 0.01, "read_timeout_s": 0.5,
         "connect_timeout_s": 1, "total_timeout_s": 5, "max_bytes": 100_000, "allow_addresses": ["127.0.0.1/32"],
         "slow_after_s": 1}


@pytest.fixture(scope="module")
def web():
    with TestWeb() as server:
        yield server


@pytest.mark.parametrize("path, outcome", [
    ("/ok", "ok"),
    ("/missing", "http_404"),
    ("/pdf", "not_html"),
    ("/big", "too_big"),
    ("/bomb", "too_big"),
    ("/flaky", "ok"),
    ("/ratelimited", "ok"),
    ("/stall", "timeout"),
    ("/loop", "redirect_loop"),
    ("/binary", "binary"),
])
def test_each_outcome_is_recorded(web, path, outcome):
    stats = Counter()
    [got] = fetch_pages([web.url(path)], FETCH, stats)
    assert got.outcome == outcome
    assert stats[f"fetch/{outcome}"] == 1
    if outcome == "ok":
        assert got.body == ARTICLE.encode()


def test_retries_transient_errors_once_each(web):
    fetch_pages([web.url("/flaky?again"), web.url("/ratelimited?again")], FETCH, Counter())
    assert web.hits["/flaky?again"] == 2 and web.hits["/ratelimited?again"] == 2


def test_retry_after_is_honoured(web):
    start = time.monotonic()
    [got] = fetch_pages([web.url("/ratelimited?wait")], FETCH, Counter())
    assert got.outcome == "ok" and time.monotonic() - start >= 0.9  # the server asked for 1 s


@pytest.mark.parametrize("url", ["http://10.1.2.3/", "http://192.168.0.1/x", "http://169.254.169.254/latest",
                                 "http://[::1]/"])
def test_private_addresses_are_refused_without_connecting(url):
    [got] = fetch_pages([url], {**FETCH, "allow_addresses": []}, Counter())
    assert got.outcome == "blocked_address"


def test_loopback_is_refused_unless_allowlisted(web):
    [got] = fetch_pages([web.url("/ok?private")], {**FETCH, "allow_addresses": []}, Counter())
    assert got.outcome == "blocked_address" and web.hits["/ok?private"] == 0


def test_fetch_task_writes_html_pages_to_warc(web, tmp_path):
    urls = tmp_path / "urls.jsonl.zst"
    write_documents(urls, [Document(id=str(i), url=web.url(p)) for i, p in enumerate(["/ok", "/missing", "/ok?x"])])
    result = fetch_task.fn(str(urls), str(tmp_path / "fetch"), FETCH)
    pages = {page.url: page.html for page in warc_records(tmp_path / "fetch" / "pages.warc.gz")}
    assert set(pages) == {web.url("/ok"), web.url("/ok?x")}
    assert pages[web.url("/ok")] == ARTICLE
    assert result["stats"] == {"fetch/ok": 2, "fetch/http_404": 1}


def test_charsets_and_binary_pages_end_to_end(web, tmp_path):
    paths = ["/latin1", "/mislabelled", "/binary"]
    docs = [Document(id=str(i), url=web.url(p)) for i, p in enumerate(paths)]
    write_documents(tmp_path / "urls.jsonl.zst", docs)
    fetch_task.fn(str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch"), FETCH)
    shard = ShardPlan("00000", str(tmp_path / "fetch" / "pages.warc.gz"), urls=str(tmp_path / "urls.jsonl.zst"))
    stats = Counter()
    texts = {d.url: d.text for d in Extract("trafilatura")(shard_pages(shard, stats), stats)}
    assert texts[web.url("/latin1")] == texts[web.url("/mislabelled")] == "Café crème à la française, déjà vu."
    assert web.url("/binary") not in texts and stats["extract/in"] == 2  # the binary page never reached extraction


KILLABLE = """
import sys
from tasks.corpus.prefect_tasks import fetch_task
fetch_task.fn(sys.argv[1], sys.argv[2], {fetch!r})
"""


def test_killed_fetch_resumes_without_duplicates_or_gaps(web, tmp_path):
    urls = [web.url(f"/slow/{i}") for i in range(60)]
    write_documents(tmp_path / "urls.jsonl.zst", [Document(id=str(i), url=u) for i, u in enumerate(urls)])
    args = [sys.executable, "-c", KILLABLE.format(fetch={**FETCH, "concurrency": 4, "per_host": 4}),
            str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch")]
    journal = tmp_path / "fetch" / "outcomes.jsonl"
    proc = subprocess.Popen(args, cwd=os.getcwd(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 15) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fetched_before = len(journal.read_text().splitlines())
    assert 15 <= fetched_before < 60

    result = fetch_task.fn(str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch"), FETCH)
    with open(tmp_path / "fetch" / "pages.warc.gz", "rb") as fh:
        stored = [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(fh)]
    assert sorted(stored) == sorted(urls)  # every page once: no duplicates, no gaps
    assert result["stats"] == {"fetch/ok": 60}
    assert sum(web.hits[f"/slow/{i}"] for i in range(60)) <= 60 + 4  # only the 4 in flight are fetched again


def test_a_trickling_page_is_given_up_as_slow_long_before_the_total_timeout(web):
    stats = Counter()
    started = time.monotonic()
    [got] = fetch_pages([web.url("/trickle")], {**FETCH, "total_timeout_s": 60}, stats)
    assert got.outcome == "slow" and stats["fetch/slow"] == 1
    assert time.monotonic() - started < 5  # slow_after_s=1 at 1 kB/s, not the 60 s total timeout


def test_a_shard_whose_pages_fail_on_the_network_fails_and_retries_them_next_time(web, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: every connection is refused
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    urls = [f"http://127.0.0.1:{dead}/slow/p{i}" for i in range(4)] + [web.url("/ok?net")]
    write_documents(tmp_path / "urls.jsonl.zst", [Document(id=str(i), url=u) for i, u in enumerate(urls)])
    with pytest.raises(FetchFailed, match=r"4 of 5 pages failed on the network \(error_ConnectError 4\)"):
        fetch_task.fn(str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch"), FETCH)
    back = ThreadingHTTPServer(("127.0.0.1", dead), webserver.TestWebHandler)  # the network is back
    threading.Thread(target=back.serve_forever, daemon=True).start()
    try:
        result = fetch_task.fn(str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch"), FETCH)
    finally:
        back.shutdown()
    assert result["stats"]["fetch/ok"] == 5  # the failed pages were fetched again...
    assert web.hits["/ok?net"] == 1  # ...and the one already fetched was not


def test_pages_failing_on_the_network_while_the_network_answers_are_dead_links_not_an_outage(web, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    urls = [f"http://127.0.0.1:{dead}/gone/{i}" for i in range(4)] + ["http://site-long-gone.invalid/story"]
    write_documents(tmp_path / "urls.jsonl.zst", [Document(id=str(i), url=u) for i, u in enumerate(urls)])
    online = {**FETCH, "connectivity_url": web.url("/ok?probe")}  # it answers: the network is up
    result = fetch_task.fn(str(tmp_path / "urls.jsonl.zst"), str(tmp_path / "fetch"), online)
    assert result["stats"] == {"fetch/error_ConnectError": 4, "fetch/error_gaierror": 1} and web.hits["/ok?probe"] == 1


def test_a_damaged_journal_line_is_counted_and_refetched_and_a_torn_last_line_is_cut(tmp_path):
    lines = [json.dumps({"url": f"https://a.example/{i}", "outcome": "not_html", "status": 200, "warc_end": 0})
             for i in range(3)]
    journal = tmp_path / "outcomes.jsonl"
    journal.write_text(f"{lines[0]}\n{{\"url\": \"https://a.exa\x00\n{lines[1]}\n{lines[2][:20]}")
    store = PageStore(tmp_path)
    store.close()
    assert set(store.done) == {"https://a.example/0", "https://a.example/1"}  # the damaged line's page: fetched again
    assert store.outcome_counts()["fetch/damaged_journal_line"] == 1
    assert journal.read_text().endswith(f"{lines[1]}\n")  # the next outcome starts a line of its own
