"""An HTTP-aware fault proxy in front of an S3 endpoint (moto's server), for the chaos run and its tests.

Toxiproxy works on TCP and cannot answer 503 or 500, so this proxy reads each request, sorts it
into an operation (a GET of a WARC or of a dedup file, a PUT of a shard output or of a done marker,
anything else) and answers about `rate` of each faulted operation's requests with a fault instead of
the store's answer, at gaps drawn from a seeded generator (uniform, averaging 1 / `rate` requests, so
that every operation, even a rare one, meets its share):

- `reset`: the connection is cut mid-body (mid-request for a PUT), with a TCP reset;
- `slowdown`: 503 with S3's `SlowDown` error;
- `error500`: 500 with S3's `InternalError`;
- `stall`: nothing for `stall_s` seconds (longer than the client's read timeout), then a cut;
- `short`: the body ends short of its Content-Length (GETs only).

The kinds go round per operation, so every kind reaches every operation once enough faults have
fired. `outage(key)` makes every request for one object fail (a reset) until `outage(None)`. Every
fault is counted by kind and operation, and the WARC bytes sent whole are counted too.
"""
from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

GET_KINDS = ("reset", "slowdown", "error500", "stall", "short")
PUT_KINDS = ("reset", "slowdown", "error500", "stall")
S3_ERROR = """<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault</RequestId></Error>"""
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def operation(method: str, key: str) -> str:
    """Which kind of store operation a request is: `get_warc`, `get_dedup`, `put_marker`,
    `put_output` or `other` (listings, HEADs, documents, the funnel)."""
    name = key.rsplit("/", 1)[-1]
    if method == "GET" and (name.endswith((".warc.gz", ".warc"))):
        return "get_warc"
    if method == "GET" and ("/dedup/" in key or name.startswith(("bands", "pairs"))):
        return "get_dedup"
    if method == "PUT" and name.startswith("done"):
        return "put_marker"
    if method == "PUT" and ("/shards/" in key or "/tokens/" in key or "/dedup/" in key):
        return "put_output"
    return "other"


class FaultProxy:
    """The proxy on 127.0.0.1 (a free port), forwarding to `upstream`, run in a thread of its own."""

    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0, stall_s: float = 3.0,
                 kinds: tuple[str, ...] | None = None):
        self.upstream, self.rate, self.stall_s = upstream.rstrip("/"), rate, stall_s
        self.kinds = kinds  # the kinds of fault to inject (None: all)
        self.rng = random.Random(seed)
        self.faults: Counter = Counter()       # (kind, operation) -> faults injected
        self.requests: Counter = Counter()     # operation -> requests seen
        self.turns: Counter = Counter()        # operation -> faults injected since the proxy started
        self.countdown: Counter = Counter()    # operation -> requests until its next fault
        self.warc_bytes = 0                    # WARC bytes sent in answers that were not faulted
        self.outage_key: str | None = None
        self.outage_started = False
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outage(self, key: str | None, at_first_get: bool = False) -> None:
        """Fail every request for the object whose key ends with `key` (None: end the outage), from
        now on or, `at_first_get`, from the first GET of its bytes (that GET included) on."""
        self.outage_key, self.outage_started = key, not at_first_get

    def reset_counts(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()
            self.warc_bytes = 0

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.session = self.loop.run_until_complete(self._session())
        self.started.set()
        self.loop.run_forever()

    async def _shutdown(self) -> None:
        await self.runner.cleanup()
        await self.session.close()

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(auto_decompress=False)

    def _pick(self, op: str) -> str | None:
        """The fault for this request, or None to forward it."""
        kinds = [k for k in (GET_KINDS if op.startswith("get") else PUT_KINDS) if self.kinds is None or k in self.kinds]
        with self.lock:
            self.requests[op] += 1
            if op == "other" or self.rate <= 0 or not kinds:
                return None
            self.countdown[op] = (self.countdown[op] or self.rng.randint(1, max(1, round(2 / self.rate) - 1))) - 1
            if self.countdown[op]:
                return None
            kind = kinds[self.turns[op] % len(kinds)]  # round the kinds, in order, across runs
            self.turns[op] += 1
            self.faults[kind, op] += 1
            return kind

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.path
        op = operation(request.method, key)
        if self.outage_key and key.endswith(self.outage_key):
            self.outage_started |= request.method == "GET"
        if self.outage_started and key.endswith(self.outage_key or "\0"):
            with self.lock:
                self.requests[op] += 1
                self.faults["outage", op] += 1
            return self._cut(request)
        fault = self._pick(op)
        if fault in ("slowdown", "error500"):
            code, message = (("SlowDown", "Please reduce your request rate."), ("InternalError", "We encountered an "
                             "internal error. Please try again."))[fault == "error500"]
            return web.Response(status=503 if fault == "slowdown" else 500, content_type="application/xml",
                                text=S3_ERROR.format(code=code, message=message))
        if fault == "stall":
            await asyncio.sleep(self.stall_s)
            return self._cut(request)
        if fault == "reset" and request.method != "GET":
            return self._cut(request)
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                        headers={k: v for k, v in request.headers.items()
                                                 if k.lower() not in HOP_HEADERS},
                                        allow_redirects=False) as upstream:
            payload = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        if fault in ("reset", "short") and len(payload) > 1:
            return await self._partial(request, upstream.status, headers, payload, abort=fault == "reset")
        if op == "get_warc" and upstream.status in (200, 206):
            with self.lock:
                self.warc_bytes += len(payload)
        if request.method == "HEAD":  # the object's length, with no body
            response = web.StreamResponse(status=upstream.status, headers=headers)
            response.content_length = int(upstream.headers.get("Content-Length", 0))
            await response.prepare(request)
            await response.write_eof()
            return response
        return web.Response(status=upstream.status, headers=headers, body=payload)

    async def _partial(self, request: web.Request, status: int, headers: dict[str, Any], payload: bytes,
                       abort: bool) -> web.StreamResponse:
        """Half the body after a Content-Length for all of it, then a reset (`abort`) or a clean close."""
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[:len(payload) // 2])
        await asyncio.sleep(0.01)
        transport = request.transport
        if transport is not None:
            transport.abort() if abort else transport.close()
        return response

    def _cut(self, request: web.Request) -> web.StreamResponse:
        """No answer at all: the connection reset."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)
