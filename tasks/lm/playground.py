"""The sampling playground's web app: one page, and one streaming endpoint per request.

FastAPI rather than Gradio: a request here is a stream of token events (text, probability, the
likeliest alternatives) that the page colours as they come, and requests from every open page meet
in one continuous batch per model (`model.batching`); a plain HTTP stream of JSON lines carries that
with no framework queue between the page and the batch.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from model.batching import BatchedGenerator, Request

PAGE = Path(__file__).with_name("playground.html")


def create_app(engines: dict[str, BatchedGenerator], check: Callable[[dict[str, Any]], dict[str, Any]],
               defaults: dict[str, Any]) -> FastAPI:
    """The app over one engine per checkpoint (by name, in the order the page shows them). `check`
    turns a request's JSON into sampling settings or raises ValueError with one line to show."""
    app = FastAPI(title="opengpt2 playground")
    app.state.engines = engines
    page = PAGE.read_text().replace("__CONFIG__", json.dumps({"models": list(engines), "defaults": defaults}))

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.post("/api/generate")
    async def generate(http: HttpRequest) -> Any:
        try:
            body = await http.json()
            name = body.pop("model", next(iter(engines)))
            if name not in engines:
                raise ValueError(f"model={name}: not served here (one of {', '.join(engines)})")
            settings = check(body)
        except ValueError as err:  # pydantic's ValidationError is one too
            return JSONResponse({"error": str(err)}, status_code=422)
        return StreamingResponse(stream(engines[name], settings), media_type="application/x-ndjson")

    return app


async def stream(engine: BatchedGenerator, settings: dict[str, Any]) -> AsyncIterator[str]:
    """The request's events as JSON lines, as the decoding thread produces them; a page that goes
    away cancels its request, which frees its row of the batch."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    request = Request(on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event), **settings)
    engine.submit(request)
    try:
        while True:
            event = await events.get()
            yield json.dumps(event) + "\n"
            if event["type"] in ("done", "error"):
                return
    finally:
        request.cancelled = True


class PlaygroundServer(uvicorn.Server):
    """uvicorn, ending the app's decoders when it stops, before it waits for open requests: each
    stream in flight ends at once (a stream of 1,024 tokens can take a minute on a CPU), and no
    decoding thread outlives the interpreter."""

    async def shutdown(self, sockets: Any = None) -> None:
        for engine in self.config.app.state.engines.values():
            engine.close()  # each request in flight gets its error event, and its stream ends
        await super().shutdown(sockets)


def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` until Ctrl+C (uvicorn raises it again once stopped, as `uvicorn.run` also ignores)."""
    with contextlib.suppress(KeyboardInterrupt):
        PlaygroundServer(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
