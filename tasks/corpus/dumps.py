"""Dump downloads for the corpus refresh: the files of a URL list (a Pushshift mirror, say) that the
dumps folder lacks, streamed to disk. An interrupted download resumes from its `.part` file with an
HTTP Range request; a file appears under its own name only once it is complete."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from httpx_retries import RetryTransport
from prefect import task
from tqdm import tqdm

from tasks.corpus.fetch import retry_policy

log = logging.getLogger(__name__)

class IncompleteDownload(Exception):
    pass


def dump_name(url: str) -> str:
    """The file name a dump URL is saved under: its last path segment."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def download_client(cfg: dict[str, Any]) -> httpx.Client:
    """A client with the page fetcher's retry policy and timeouts (`corpus.fetch`).

    No private-address guard, unlike page fetching: these URLs are the operator's own settings,
    not links taken from Reddit."""
    transport = RetryTransport(transport=httpx.HTTPTransport(proxy=cfg.get("proxy")), retry=retry_policy(cfg))
    return httpx.Client(transport=transport,
                        follow_redirects=True, headers={"User-Agent": cfg["user_agent"]},
                        timeout=httpx.Timeout(cfg["read_timeout_s"], connect=cfg["connect_timeout_s"]))


def download(client: httpx.Client, url: str, target: Path) -> None:
    """`url` to `target`, continuing `target.part` when an earlier attempt left one."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    with client.stream("GET", url, headers={"Range": f"bytes={have}-"} if have else {}) as response:
        if response.status_code == 416:  # the part is not a prefix of what the server has now: start over
            part.unlink()
            return download(client, url, target)
        response.raise_for_status()
        resumed = response.status_code == 206
        expected = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
        written = 0
        with part.open("ab" if resumed else "wb") as out, tqdm(
                total=expected, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
            for chunk in response.iter_bytes():  # as they arrive: what came before a cut-off is kept
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if expected is not None and written != expected:
        raise IncompleteDownload(f"{url}: {written:,} of {expected:,} bytes")
    part.rename(target)


def download_new_dumps(urls: list[str], dumps_dir: Path, processed: list[str], cfg: dict[str, Any]) -> dict[str, int]:
    """Download each URL whose file is neither in `dumps_dir` nor among the `processed` names.

    A failed download is logged, counted and left (with its `.part`) for the next refresh to resume."""
    dumps_dir.mkdir(parents=True, exist_ok=True)
    wanted = [u for u in urls if dump_name(u) not in processed and not (dumps_dir / dump_name(u)).exists()]
    stats = {"dumps/downloaded": 0, "dumps/failed": 0}
    with download_client(cfg) as client:
        for url in wanted:
            try:
                download(client, url, dumps_dir / dump_name(url))
                stats["dumps/downloaded"] += 1
            except (httpx.HTTPError, IncompleteDownload) as error:
                log.warning("dump download failed, to be retried by the next refresh: %s (%s)", url, error)
                stats["dumps/failed"] += 1
    return stats


@task(name="download-dumps", retries=1, retry_delay_seconds=60)
def download_dumps_task(urls: list[str], dumps_dir: str, processed: list[str], cfg: dict[str, Any]) -> dict[str, int]:
    """The dump files of `urls` that the refresh has not got yet."""
    return download_new_dumps(urls, Path(dumps_dir), processed, cfg)
