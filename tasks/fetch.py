"""Stage 2, fetch: download each kept URL politely and concurrently, storing HTML responses as WARC."""
from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from prefect import task
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.caching import FilesAndCode
from tasks.document import read_documents

HTML_TYPES = ("text/html", "application/xhtml+xml")
# The body is stored decoded, so headers that describe the wire encoding would mislead a reader.
WIRE_HEADERS = {"content-encoding", "transfer-encoding", "content-length"}


@dataclass
class Fetched:
    """What came back for one URL: `outcome` is "ok" or the reason the page was not kept."""

    url: str
    outcome: str
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def http_session(cfg: dict[str, Any]) -> requests.Session:
    """A session that retries timeouts, connection errors, 429 and 5xx with backoff and Retry-After."""
    retry = Retry(total=cfg["retries"], backoff_factor=cfg["backoff_s"], backoff_jitter=cfg["backoff_s"],
                  status_forcelist=[429, 500, 502, 503, 504], respect_retry_after_header=True,
                  allowed_methods=["GET"], redirect=cfg["max_redirects"], raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=cfg["concurrency"])
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = cfg["user_agent"]
    if cfg.get("proxy"):
        session.proxies = {"http": cfg["proxy"], "https": cfg["proxy"]}
    return session


def fetch_page(session: requests.Session, url: str, cfg: dict[str, Any]) -> Fetched:
    """GET one page, keeping it only if it is HTML and under the size cap."""
    try:
        with session.get(url, timeout=(cfg["connect_timeout_s"], cfg["read_timeout_s"]), stream=True) as resp:
            got = Fetched(url, "ok", resp.status_code, resp.reason or "", list(resp.headers.items()))
            if resp.status_code != 200:
                got.outcome = f"http_{resp.status_code}"
                return got
            if not resp.headers.get("content-type", "").lower().startswith(HTML_TYPES):
                got.outcome = "not_html"
                return got
            body = bytearray()
            for chunk in resp.iter_content(64 * 1024):
                body += chunk
                if len(body) > cfg["max_bytes"]:
                    got.outcome = "too_big"
                    return got
            got.body = bytes(body)
            return got
    except requests.exceptions.RequestException as err:
        return Fetched(url, failure(err))


def failure(err: requests.exceptions.RequestException) -> str:
    """A short outcome name for a request that got no usable response."""
    # after the last retry, urllib3 wraps the cause in MaxRetryError
    cause = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(err, requests.exceptions.Timeout) or isinstance(cause, TimeoutError | ReadTimeoutError):
        return "timeout"
    if isinstance(err, requests.exceptions.TooManyRedirects):
        return "redirect_loop"
    if isinstance(err, requests.exceptions.RetryError):
        return "retries_exhausted"
    return f"error_{type(cause or err).__name__}"


def fetch_pages(urls: Iterable[str], cfg: dict[str, Any], stats: Counter) -> Iterator[Fetched]:
    """Fetch URLs on `cfg.concurrency` threads; yields every outcome, in input order."""
    session = http_session(cfg)
    with ThreadPoolExecutor(cfg["concurrency"]) as pool:
        for got in pool.map(lambda u: fetch_page(session, u, cfg), urls):
            stats[f"fetch/{got.outcome}"] += 1
            yield got


def warc_record(writer: WARCWriter, got: Fetched):
    """A WARC response record holding the decoded body and the server's headers."""
    headers = [(k, v) for k, v in got.headers if k.lower() not in WIRE_HEADERS]
    http_headers = StatusAndHeaders(f"{got.status} {got.reason}", headers, protocol="HTTP/1.1")
    return writer.create_warc_record(got.url, "response", payload=io.BytesIO(got.body),
                                     http_headers=http_headers)


@task(name="fetch", cache_policy=FilesAndCode(files=("urls_path",), exclude=("proxy",)),
      retries=2, retry_delay_seconds=10)
def fetch_task(urls_path: str, out: str, cfg: dict[str, Any], proxy: str | None = None) -> dict[str, Any]:
    """Fetch every URL in `urls_path` and write the HTML responses to `out` (WARC, gzip).

    `proxy`, when given, overrides `cfg.proxy` and is left out of the cache key.
    """
    stats: Counter = Counter()
    cfg = {**cfg, "proxy": proxy or cfg.get("proxy")}
    urls = [doc.url for doc in read_documents(Path(urls_path))]
    tmp = Path(out + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for got in tqdm(fetch_pages(urls, cfg, stats), total=len(urls), desc="fetch", unit="page"):
            if got.outcome == "ok":
                writer.write_record(warc_record(writer, got))
    tmp.replace(out)
    return {"path": out, "stats": dict(stats)}
