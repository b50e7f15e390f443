"""Serve the sample on 127.0.0.1: its web as an HTTP proxy, so that its real-looking URLs resolve
locally, and its web archive (`sample/archive`) as Common Crawl's store and the Wayback Machine's CDX
API and replay answer them."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import surt

WEB_ROOT = Path(__file__).parent / "web"
ARCHIVE_ROOT = Path(__file__).parent / "archive"
RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def page_file(root: Path, url: str) -> Path:
    """Where the page for an absolute URL is stored: <root>/<host>/<path>.html."""
    parts = urlsplit(url)
    path = parts.path.strip("/") or "index"
    return root / parts.hostname / f"{path}.html"


def replay_file(root: Path, stamp: str, url: str) -> Path:
    """Where the sample archive keeps the Wayback capture of `url` taken at `stamp` (YYYYMMDDhhmmss)."""
    return root / "wayback" / "replay" / stamp / f"{hashlib.sha1(surt.surt(url).encode()).hexdigest()}.html"


def make_handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class SampleWebHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # A proxy request carries the absolute URL; a direct one only the path.
            url = self.path if "://" in self.path else f"http://{self.headers['Host']}{self.path}"
            try:
                file = page_file(root, url).resolve()
                body = file.read_bytes() if file.is_relative_to(root.resolve()) else None
            except (OSError, TypeError, ValueError):
                body = None
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return SampleWebHandler


def cdx_rows(root: Path, query: dict[str, list[str]]) -> list[list[str]]:
    """The Wayback CDX API's answer (`output=json`: a header row, then a row per capture) for one URL,
    with `from`/`to` (timestamp prefixes), `filter=field:regex` and `fl` as the API reads them."""
    header, *rows = json.loads((root / "wayback" / "cdx.json").read_text())
    key = surt.surt(query["url"][0])
    lo, hi = query.get("from", [""])[0], query.get("to", [""])[0]
    rows = [r for r in rows if r[0] == key and r[1] >= lo and (not hi or r[1][:len(hi)] <= hi)]
    for rule in query.get("filter", []):
        field, pattern = rule.lstrip("!").split(":", 1)
        rows = [r for r in rows if bool(re.fullmatch(pattern, r[header.index(field)])) != rule.startswith("!")]
    fields = query.get("fl", [",".join(header)])[0].split(",")
    return [fields, *([r[header.index(f)] for f in fields] for r in rows)] if rows else []


def make_archive_handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class SampleArchiveHandler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.serve(head=True)

        def do_GET(self) -> None:
            self.serve(head=False)

        def serve(self, head: bool) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/cdx/search/cdx":
                return self.send(200, json.dumps(cdx_rows(root, parse_qs(parts.query))).encode(), "application/json", head)
            replay = re.match(r"/web/(\d{14})id_/(.+)$", self.path)
            file = (replay_file(root, replay[1], replay[2]) if replay else root / parts.path.lstrip("/")).resolve()
            if not file.is_relative_to(root.resolve()) or not file.is_file():
                return self.send(404, b"not found", "text/plain", head)
            data = file.read_bytes()
            ranged = RANGE.match(self.headers.get("Range", ""))
            if ranged and not replay:
                start, end = int(ranged[1]), min(int(ranged[2] or len(data) - 1), len(data) - 1)
                return self.send(206, data[start:end + 1], "application/octet-stream", head,
                                 {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
            return self.send(200, data, "text/html; charset=utf-8" if replay else "application/octet-stream", head)

        def send(self, status: int, body: bytes, content_type: str, head: bool, extra: dict | None = None) -> None:
            self.send_response(status)
            for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)),
                                "Accept-Ranges": "bytes", **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return SampleArchiveHandler


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) for the duration of the block; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Sample:
    """Where the served sample answers: `proxy` for its web, `endpoints` for its archive (as
    `corpus.fetch.archive` names them)."""

    proxy: str
    endpoints: dict[str, dict[str, str]]


def archive_endpoints(base: str) -> dict[str, dict[str, str]]:
    """`corpus.fetch.archive`'s addresses for an archive served at `base` by `make_archive_handler`."""
    return {"commoncrawl": {"base": base + "/", "collinfo": f"{base}/collinfo.json"},
            "wayback": {"cdx": f"{base}/cdx/search/cdx", "replay": f"{base}/web"}}


@contextmanager
def serve_sample(web: Path = WEB_ROOT, archive: Path = ARCHIVE_ROOT) -> Iterator[Sample]:
    """The sample web and its archive, served for the duration of the block."""
    with serving(make_handler(web)) as proxy, serving(make_archive_handler(archive)) as base:
        yield Sample(proxy, archive_endpoints(base))
