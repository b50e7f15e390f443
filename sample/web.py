"""Serve the sample web on 127.0.0.1 as an HTTP proxy, so that its real-looking URLs resolve locally."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

WEB_ROOT = Path(__file__).parent / "web"


def page_file(root: Path, url: str) -> Path:
    """Where the page for an absolute URL is stored: <root>/<host>/<path>.html."""
    parts = urlsplit(url)
    path = parts.path.strip("/") or "index"
    return root / parts.hostname / f"{path}.html"


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


@contextmanager
def serve_sample_web(root: Path = WEB_ROOT) -> Iterator[str]:
    """Run the sample web server for the duration of the block; yields its proxy URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
