"""A real HTTP server on 127.0.0.1 that plays the difficult parts of the web for the fetch tests."""
from __future__ import annotations

import gzip
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARTICLE = "<html><head><title>T</title></head><body><article><p>Hello from the test web.</p></article></body></html>"
LATIN1_ARTICLE = "<html><body><article><p>Café crème à la française, déjà vu.</p></article></body></html>"
BOMB = gzip.compress(b"<p>" + b"0" * 50_000_000, compresslevel=9)  # 50 MB of zeros in about 50 kB


class TestWebHandler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def reply(self, status: int, body: bytes = b"", content_type: str = "text/html; charset=utf-8",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up waiting, as the stall test intends
            pass

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        first = self.hits[self.path] == 1
        route = self.path.split("?")[0]
        if route == "/ok":
            self.reply(200, ARTICLE.encode())
        elif route == "/pdf":
            self.reply(200, b"%PDF-1.4", "application/pdf")
        elif route == "/big":
            self.reply(200, b"<p>" + b"x" * 300_000 + b"</p>")
        elif route == "/flaky":
            self.reply(500) if first else self.reply(200, ARTICLE.encode())
        elif route == "/ratelimited":
            self.reply(429, headers={"Retry-After": "1"}) if first else self.reply(200, ARTICLE.encode())
        elif route == "/stall":
            time.sleep(2)
            self.reply(200, ARTICLE.encode())
        elif route == "/loop":
            self.reply(302, headers={"Location": "/loop"})
        elif route == "/bomb":
            self.reply(200, BOMB, headers={"Content-Encoding": "gzip"})
        elif route == "/binary":
            self.reply(200, random.Random(0).randbytes(5000))
        elif route == "/latin1":
            self.reply(200, LATIN1_ARTICLE.encode("latin-1"), "text/html; charset=iso-8859-1")
        elif route == "/mislabelled":  # says UTF-8, is windows-1252, and its meta tag knows it
            body = '<meta charset="windows-1252">' + LATIN1_ARTICLE
            self.reply(200, body.encode("cp1252"), "text/html; charset=utf-8")
        elif route == "/trickle":  # bytes keep coming, so no read timeout fires: 100 B every 0.1 s
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"<p>" + b"x" * 97)
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up, as intended
                pass
        elif route.startswith("/slow/"):
            time.sleep(0.05)
            self.reply(200, ARTICLE.replace("Hello", route).encode())
        else:
            self.reply(404)

    def log_message(self, *args) -> None:
        pass


class TestWeb:
    """Start with `with TestWeb() as web:`; `web.url(path)` is an absolute URL on the server."""

    def __enter__(self) -> "TestWeb":
        TestWebHandler.hits = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), TestWebHandler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    @property
    def hits(self) -> Counter:
        return TestWebHandler.hits

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
