"""Where a task's work runs: on the Dask cluster the flow attached, else in the calling thread.

Prefect tasks stay in the flow's process, where Prefect caches, retries and shows them; each hands
its work, a plain function, to `on_cluster`. Dask workers so run no Prefect engine and need no
Prefect API: they import the steps' code only (this module imports Prefect lazily for that reason).
What the work logs under `tasks` comes back, through Dask's events from a worker, and is logged by
the Prefect task that handed it over, so it reaches the console and the UI either way.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from tasks import storage

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
LOG_TOPIC = "opengpt2-log"
FORWARDED = logging.getLogger("tasks")  # every module under tasks/ logs below it

_client: Client | None = None
_loggers: dict[str, logging.Logger | logging.LoggerAdapter] = {}  # call key -> the submitting task's logger


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a task or flow (its lines reach the UI), else `tasks`'s."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return FORWARDED


@contextmanager
def attached(client: Client, store: dict[str, Any]) -> Iterator[int]:
    """Send every `on_cluster` call to `client`'s workers while open, each worker (and any that joins
    later) reading and writing files with the `store` settings; yields how many calls run at once."""
    global _client
    client.register_plugin(store_plugin(store))
    client.subscribe_topic(LOG_TOPIC, log_forwarded)
    _client = client
    try:
        yield cluster_threads()
    finally:
        _client = None
        client.unsubscribe_topic(LOG_TOPIC)


def store_plugin(settings: dict[str, Any]) -> Any:
    """A Dask worker plugin that applies conf/store's settings in each worker's process (s3fs keeps
    its retry count on its class, so every process must set it itself)."""
    from distributed import WorkerPlugin

    class StoreSettings(WorkerPlugin):
        name = "opengpt2-store"

        def setup(self, worker: Any) -> None:
            storage.configure(settings)

    return StoreSettings()


def cluster_threads() -> int | None:
    """How many calls the attached cluster runs at once (None: no cluster attached)."""
    return sum(_client.nthreads().values()) if _client else None


def on_cluster(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a worker of the attached cluster, else in this thread; either way what it logs
    under `tasks` at INFO and above is logged by this thread's run logger. Dask reruns a call whose
    worker died on another worker."""
    logger = run_logger()
    if _client is None:
        outside_a_run = logger is FORWARDED  # the records stay where they are
        with nullcontext() if outside_a_run else forwarding(lambda r: logger.log(r.levelno, r.getMessage())):
            return fn(*args)
    key = f"{fn.__name__}-{uuid.uuid4().hex}"  # how the call shows in Dask's dashboard
    _loggers[key] = logger
    try:
        return _client.submit(forwarding_to_client, key, fn, *args, key=key).result()
    finally:
        _loggers.pop(key, None)


@contextmanager
def forwarding(send: Callable[[logging.LogRecord], None]) -> Iterator[None]:
    """Hand `send` every record this thread logs under `tasks` at INFO and above while open, instead
    of to the handlers above (the copy sent on is the one shown)."""
    thread = threading.get_ident()

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:  # not another call's, on a worker with several threads
                send(record)

    handler, level, propagate = Forward(logging.INFO), FORWARDED.level, FORWARDED.propagate
    FORWARDED.addHandler(handler)
    FORWARDED.setLevel(min(level or logging.INFO, logging.INFO))
    FORWARDED.propagate = False
    try:
        yield
    finally:
        FORWARDED.removeHandler(handler)
        FORWARDED.setLevel(level)
        FORWARDED.propagate = propagate


def forwarding_to_client(key: str, fn: Callable[..., T], *args: Any) -> T:
    """On a worker: `fn(*args)`, its records sent to the client as events tagged with `key`."""
    from distributed import get_worker

    worker = get_worker()
    with forwarding(lambda record: worker.log_event(LOG_TOPIC, {"key": key, "level": record.levelno,
                                                                "message": record.getMessage()})):
        return fn(*args)


def log_forwarded(event: tuple[float, dict[str, Any]]) -> None:
    """In the client: log a worker's record with the logger of the task that submitted its call."""
    message = event[1]
    _loggers.get(message["key"], FORWARDED).log(message["level"], message["message"])
