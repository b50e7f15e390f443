from collections import Counter

import pytest

from flows.common import load_config
from tasks.document import Document, write_documents
from tasks.extract import warc_pages
from tasks.fetch import fetch_pages, fetch_task
from tests.webserver import ARTICLE, TestWeb

FETCH = {**load_config()["corpus"]["fetch"], "retries": 2, "backoff_s": 0.01, "read_timeout_s": 0.5,
         "connect_timeout_s": 1, "max_bytes": 100_000}


@pytest.fixture(scope="module")
def web():
    with TestWeb() as server:
        yield server


@pytest.mark.parametrize("path, outcome", [
    ("/ok", "ok"),
    ("/missing", "http_404"),
    ("/pdf", "not_html"),
    ("/big", "too_big"),
    ("/flaky", "ok"),
    ("/ratelimited", "ok"),
    ("/stall", "timeout"),
    ("/loop", "redirect_loop"),
])
def test_each_outcome_is_recorded(web, path, outcome):
    stats = Counter()
    [got] = fetch_pages([web.url(path)], FETCH, stats)
    assert got.outcome == outcome
    assert stats[f"fetch/{outcome}"] == 1
    if outcome == "ok":
        assert got.body == ARTICLE.encode()


def test_retries_transient_errors_once_each(web):
    assert web.hits["/flaky"] == 2 and web.hits["/ratelimited"] == 2


def test_fetch_task_writes_html_pages_to_warc(web, tmp_path):
    urls = tmp_path / "urls.jsonl.zst"
    write_documents(urls, [Document(id=str(i), url=web.url(p)) for i, p in enumerate(["/ok", "/missing", "/ok?x"])])
    result = fetch_task.fn(str(urls), str(tmp_path / "pages.warc.gz"), FETCH)
    pages = dict(warc_pages(tmp_path / "pages.warc.gz"))
    assert set(pages) == {web.url("/ok"), web.url("/ok?x")}
    assert pages[web.url("/ok")] == ARTICLE
    assert result["stats"] == {"fetch/ok": 2, "fetch/http_404": 1}
