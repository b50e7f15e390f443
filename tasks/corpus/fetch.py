"""Stage 2, fetch: download each kept URL politely and concurrently, storing HTML responses as WARC.

Every URL's outcome goes to a journal next to the WARC file, written after its record, so a run
that is killed resumes where it stopped: finished URLs are skipped and a half-written record is cut off.
"""
from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import socket
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_retries import Retry, RetryTransport
from tqdm import tqdm
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.corpus.document import read_documents
from tasks.corpus.warc import ORIGIN_HEADER
from tasks.errors import STOPPING, Interrupted

log = logging.getLogger(__name__)
HTML_TYPES = ("text/html", "application/xhtml+xml")
# The body is stored decoded, so headers that describe the wire encoding would mislead a reader.
WIRE_HEADERS = {"content-encoding", "transfer-encoding", "content-length"}
# Outcomes that say the network (not the page) failed: retried by the next attempt, and the share of
# them decides whether a fetch stage failed as a whole.
NETWORK_FAILURES = ("timeout", "error_")
# Outcomes whose page is stored: a live page, or a capture from a web archive.
KEPT = ("ok", "archive_commoncrawl", "archive_wayback")
BINARY_MAGIC = (b"%PDF", b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"PK\x03\x04", b"\x1f\x8b", b"\x00\x00\x01\x00")


class FetchFailed(Exception):
    """A fetch stage whose pages mostly failed on the network: it ends Failed and is not cached."""


def is_binary(body: bytes) -> bool:
    """A body served as HTML that is not text: a known file signature, or NUL bytes early on."""
    return body.startswith(BINARY_MAGIC) or b"\x00" in body[:1024]


@dataclass
class Fetched:
    """What came back for one URL: `outcome` is one of `KEPT` or the reason no page was kept. An
    archived page keeps where it came from (`origin`) and when it was captured (`captured`, ISO 8601)."""

    url: str
    outcome: str
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    origin: str = "live"
    captured: str | None = None  # None: now


class BlockedAddress(Exception):
    """The URL's host resolves to a private, loopback, link-local or reserved address."""


def address_guard(allowed: Iterable[str]):
    """An httpx request hook that refuses non-public addresses, redirects included, unless allowlisted."""
    allowed_nets = [ipaddress.ip_network(a) for a in allowed]

    async def guard(request: httpx.Request) -> None:
        host = request.url.host
        infos = await asyncio.get_running_loop().getaddrinfo(host, request.url.port or 80, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if not ip.is_global and not any(ip in net for net in allowed_nets):
                raise BlockedAddress(f"{host} resolves to non-public address {ip}")

    return guard


def retry_policy(cfg: dict[str, Any]) -> Retry:
    """Timeouts, connection errors, 429 and 5xx are retried with jittered exponential backoff,
    honouring Retry-After; other 4xx are final."""
    return Retry(total=cfg["retries"], backoff_factor=cfg["backoff_s"], backoff_jitter=1.0,
                 status_forcelist=[429, 500, 502, 503, 504], respect_retry_after_header=True,
                 max_backoff_wait=cfg["max_retry_wait_s"])


def http_client(cfg: dict[str, Any]) -> httpx.AsyncClient:
    """An async client with `retry_policy`, refusing non-public addresses unless allowlisted."""
    transport = RetryTransport(transport=httpx.AsyncHTTPTransport(proxy=cfg.get("proxy")), retry=retry_policy(cfg))
    hooks = {} if cfg.get("proxy") else {"request": [address_guard(cfg["allow_addresses"])]}
    return httpx.AsyncClient(
        transport=transport, follow_redirects=True, max_redirects=cfg["max_redirects"], event_hooks=hooks,
        timeout=httpx.Timeout(cfg["read_timeout_s"], connect=cfg["connect_timeout_s"]),
        headers={"User-Agent": cfg["user_agent"]},
        limits=httpx.Limits(max_connections=cfg["concurrency"], max_keepalive_connections=cfg["concurrency"]))


async def fetch_page(client: httpx.AsyncClient, url: str, cfg: dict[str, Any]) -> Fetched:
    """GET one page, keeping it only if it is HTML and, decoded, under the size cap."""
    try:
        async with asyncio.timeout(cfg["total_timeout_s"]):
            async with client.stream("GET", url) as resp:
                got = Fetched(url, "ok", resp.status_code, resp.reason_phrase, list(resp.headers.items()))
                if resp.status_code != 200:
                    got.outcome = f"http_{resp.status_code}"
                    return got
                if not resp.headers.get("content-type", "").lower().startswith(HTML_TYPES):
                    got.outcome = "not_html"
                    return got
                body, started = bytearray(), asyncio.get_running_loop().time()
                async for chunk in resp.aiter_bytes():  # decoded, so a gzip bomb trips the cap too
                    body += chunk
                    if len(body) > cfg["max_bytes"]:
                        got.outcome = "too_big"
                        return got
                    if too_slow(len(body), asyncio.get_running_loop().time() - started, cfg):
                        got.outcome = "slow"  # a trickle: it would hold its host's slot until the total timeout
                        return got
                got.body = bytes(body)
                got.outcome = "binary" if is_binary(got.body) else "ok"
                return got
    except (TimeoutError, httpx.TimeoutException):
        return Fetched(url, "timeout")
    except httpx.TooManyRedirects:
        return Fetched(url, "redirect_loop")
    except BlockedAddress:
        return Fetched(url, "blocked_address")
    except (httpx.HTTPError, OSError, ValueError) as err:
        return Fetched(url, f"error_{type(err).__name__}")


def too_slow(received: int, elapsed: float, cfg: dict[str, Any]) -> bool:
    """After `slow_after_s`, a page arriving below `min_bytes_per_s` is given up."""
    return elapsed > cfg["slow_after_s"] and received < cfg["min_bytes_per_s"] * elapsed


async def fetch_all(urls: list[str], cfg: dict[str, Any]):
    """Yield each URL's `Fetched` as it completes, with at most `concurrency` requests in flight
    and at most `per_host` to any one host."""
    per_host = defaultdict(lambda: asyncio.Semaphore(cfg["per_host"]))
    slots = asyncio.Semaphore(cfg["concurrency"])
    async with http_client(cfg) as client:
        async def one(url: str) -> Fetched:
            # the host's turn first: a request queued behind a slow host must not hold a global slot
            async with per_host[urlsplit(url).hostname], slots:
                return await fetch_page(client, url, cfg)

        for next_done in asyncio.as_completed([one(u) for u in urls]):
            yield await next_done


def fetch_pages(urls: list[str], cfg: dict[str, Any], stats: Counter) -> list[Fetched]:
    """Fetch URLs concurrently and count the outcomes (a convenience for small batches)."""
    async def run() -> list[Fetched]:
        return [got async for got in fetch_all(urls, cfg)]

    results = asyncio.run(run())
    stats.update(f"fetch/{got.outcome}" for got in results)
    return results


class PageStore:
    """pages.warc.gz plus the journal of outcomes that makes a fetch resumable."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.warc_path, self.journal_path = out_dir / "pages.warc.gz", out_dir / "outcomes.jsonl"
        self.damaged_lines = 0
        self.done = self._read_journal()
        end = max((e["warc_end"] for e in self.done.values()), default=0)
        with open(self.warc_path, "ab") as warc:
            warc.truncate(end)  # drop a record whose journal line was never written
        self.warc = open(self.warc_path, "ab")
        self.writer = WARCWriter(self.warc, gzip=True)
        self.journal = open(self.journal_path, "a")

    def _read_journal(self) -> dict[str, dict[str, Any]]:
        """The outcomes recorded so far. A last line cut off by a kill is cut from the file, so that
        the next line starts a line of its own; a damaged line before it (the disk's doing) is
        counted (`fetch/damaged_journal_line`) and its URL fetched again."""
        done: dict[str, dict[str, Any]] = {}
        if not self.journal_path.exists():
            return done
        text = self.journal_path.read_text()
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
            self.journal_path.write_text(text)
        for number, line in enumerate(text.splitlines(), 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                self.damaged_lines += 1
                log.warning("%s: line %d is damaged; its page is fetched again", self.journal_path, number)
                continue
            if not entry["outcome"].startswith(NETWORK_FAILURES):  # those get another try
                done[entry["url"]] = entry
        return done

    def add(self, got: Fetched) -> None:
        if got.outcome in KEPT:
            self.writer.write_record(warc_record(self.writer, got))
            self.warc.flush()
        else:
            log.info("fetch %s: %s", got.url, got.outcome)
        entry = {"url": got.url, "outcome": got.outcome, "status": got.status, "warc_end": self.warc.tell()}
        self.journal.write(json.dumps(entry) + "\n")
        self.journal.flush()
        self.done[got.url] = entry

    def outcome_counts(self) -> Counter:
        counts = Counter(f"fetch/{e['outcome']}" for e in self.done.values())
        if self.damaged_lines:
            counts["fetch/damaged_journal_line"] = self.damaged_lines
        return counts

    def close(self) -> None:
        self.warc.close()
        self.journal.close()


def warc_record(writer: WARCWriter, got: Fetched):
    """A WARC response record holding the decoded body and the server's headers; its `WARC-Date` is
    when the page was captured and `OpenGPT2-Origin` where it came from."""
    headers = [(k, v) for k, v in got.headers if k.lower() not in WIRE_HEADERS]
    http_headers = StatusAndHeaders(f"{got.status} {got.reason}", headers, protocol="HTTP/1.1")
    warc_headers = {ORIGIN_HEADER: got.origin, **({"WARC-Date": got.captured} if got.captured else {})}
    return writer.create_warc_record(got.url, "response", payload=io.BytesIO(got.body),
                                     http_headers=http_headers, warc_headers_dict=warc_headers)


def fetch_into(store: PageStore, urls: list[str], cfg: dict[str, Any]) -> None:
    """Fetch the URLs the store has no outcome for yet, recording each as it completes."""
    todo = [u for u in dict.fromkeys(urls) if u not in store.done]

    async def run() -> None:
        with tqdm(total=len(urls), initial=len(urls) - len(todo), desc="fetch", unit="page") as bar:
            async for got in fetch_all(todo, cfg):
                store.add(got)
                bar.update()
                if STOPPING.is_set():  # what is recorded so far is kept; a rerun fetches the rest
                    raise Interrupted("the fetch was stopped: rerun to resume")

    asyncio.run(run())


def fetch_to_warc(urls_path: str, out: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Fetch every URL in `urls_path` into `out`/pages.warc.gz, resuming an interrupted run; FetchFailed
    when too many failed on the network."""
    store = PageStore(Path(out))
    try:
        fetch_into(store, [doc.url for doc in read_documents(Path(urls_path))], cfg)
    finally:
        store.close()
    stats = store.outcome_counts()
    check_failures(stats, cfg["max_network_failure_share"], urls_path, lambda: network_answers(cfg))
    return {"path": str(store.warc_path), "stats": dict(stats)}


def network_answers(cfg: dict[str, Any]) -> bool:
    """Whether `cfg.connectivity_url` answers at all (any HTTP status), through the fetch's proxy:
    then the network is up, and pages that failed on it failed on their own sites (a dead domain, a
    refused connection), as most links of old months do."""
    if not cfg.get("connectivity_url"):
        return False
    try:
        with httpx.Client(proxy=cfg.get("proxy"), timeout=cfg["connect_timeout_s"] + cfg["read_timeout_s"]) as client:
            client.get(cfg["connectivity_url"])
        return True
    except httpx.HTTPError:
        return False


def check_failures(stats: Counter, max_share: float, where: str,
                   network_answers: Callable[[], bool] = lambda: False) -> None:
    """FetchFailed when more than `max_share` of the pages failed on the network, or none came back,
    unless `network_answers()` says the network is up: then those are dead links, logged and kept
    counted as they are."""
    total = sum(stats.values())
    failed = Counter({k.removeprefix("fetch/"): v for k, v in stats.items()
                      if k.removeprefix("fetch/").startswith(NETWORK_FAILURES)})
    kept = sum(stats[f"fetch/{outcome}"] for outcome in KEPT)
    if total and (sum(failed.values()) > max_share * total or not kept and failed):
        top = ", ".join(f"{reason} {n}" for reason, n in failed.most_common(3))
        if network_answers():
            log.warning("fetch of %s: %d of %d pages failed on the network (%s), but the network answers: their "
                        "sites are gone or refuse, counted as such", where, sum(failed.values()), total, top)
            return
        raise FetchFailed(f"fetch of {where}: {sum(failed.values())} of {total} pages failed on the network ({top}), "
                          f"over corpus.fetch.max_network_failure_share={max_share}: is the network up? Nothing is "
                          "cached; a rerun retries those pages")


