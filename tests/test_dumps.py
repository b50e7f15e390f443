"""Dump downloads for the refresh, against a real HTTP server on 127.0.0.1 that honours Range
requests and can cut a response off halfway."""
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zstandard

from flows.common import load_config
from tests.conftest import run_flow
from flows.refresh import refresh_flow
from sample.build import DUMP
from tasks.corpus.dumps import download_new_dumps, dump_name

FILES = {"/RS_2019-01.zst": random.Random(1).randbytes(3_000_000), "/RS_2019-02.zst": random.Random(2).randbytes(1000)}


class DumpMirror(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    cut_off_once: set[str] = set()

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Range")))
        if self.path not in self.files:
            self.send_error(404)
            return
        body, start = self.files[self.path], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in self.cut_off_once:  # the connection dies a third of the way through
            self.cut_off_once.discard(self.path)
            self.wfile.write(body[start:len(body) // 3])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror():
    DumpMirror.files, DumpMirror.requests, DumpMirror.cut_off_once = dict(FILES), [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), DumpMirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetch_settings() -> dict:
    return {**load_config()["corpus"]["fetch"], "retries": 1, "backoff_s": 0.01}


def test_refresh_download_resumes_a_cut_off_dump_with_a_range_request(mirror, tmp_path):
    DumpMirror.cut_off_once = {"/RS_2019-01.zst"}
    urls = [f"{mirror}/RS_2019-01.zst", f"{mirror}/RS_2019-02.zst", f"{mirror}/RS_2019-03.zst"]

    first = download_new_dumps(urls, tmp_path, [], fetch_settings())
    assert first == {"dumps/downloaded": 1, "dumps/failed": 2}  # January cut off, March missing
    assert not (tmp_path / "RS_2019-01.zst").exists()  # only complete files get their real name
    kept = (tmp_path / "RS_2019-01.zst.part").stat().st_size
    assert kept == len(FILES["/RS_2019-01.zst"]) // 3

    second = download_new_dumps(urls, tmp_path, [], fetch_settings())
    assert second == {"dumps/downloaded": 1, "dumps/failed": 1}
    assert (tmp_path / "RS_2019-01.zst").read_bytes() == FILES["/RS_2019-01.zst"]
    assert ("/RS_2019-01.zst", f"bytes={kept}-") in DumpMirror.requests
    assert Counter(path for path, _ in DumpMirror.requests)["/RS_2019-02.zst"] == 1  # not fetched again


def test_refresh_download_skips_processed_months(mirror, tmp_path):
    urls = [f"{mirror}/RS_2019-01.zst", f"{mirror}/RS_2019-02.zst"]
    assert download_new_dumps(urls, tmp_path, ["RS_2019-01.zst"], fetch_settings())["dumps/downloaded"] == 1
    assert [path for path, _ in DumpMirror.requests] == ["/RS_2019-02.zst"]
    assert dump_name(f"{mirror}/a/RS%5F2019-04.zst?x=1") == "RS_2019-04.zst"


def test_refresh_from_a_url_list(mirror, tmp_path):
    lines = zstandard.ZstdDecompressor().decompress(DUMP.read_bytes(), max_output_size=10**8).decode().splitlines()
    DumpMirror.files = {"/RS_2019-01.zst": zstandard.ZstdCompressor().compress(("\n".join(lines[:30]) + "\n").encode())}
    cfg = load_config([f"paths.data={tmp_path}", "logger=none", f"corpus.refresh.dump_urls=[{mirror}/RS_2019-01.zst]"])
    result = run_flow(refresh_flow, cfg)
    assert result["new_dumps"] == ["RS_2019-01.zst"] and result["version"] == 1 and result["stats"]["fetch/ok"] > 0
    assert run_flow(refresh_flow, cfg) == {"new_dumps": [], "version": 1}  # processed: not downloaded again
    assert len(DumpMirror.requests) == 1
