"""Where a task's work runs: on the Dask cluster the flow attached, else in the calling thread.

Prefect tasks stay in the flow's process, where Prefect caches, retries and shows them; each hands
its work, a plain function, to `on_cluster`. Dask workers so run no Prefect engine and need no
Prefect API: they import the steps' code only (this module imports Prefect lazily for that reason).
The cluster is the one `attached` set in the calling context (Prefect copies the context into each
task's thread).
What the work logs under `tasks` comes back, through Dask's events from a worker, and is logged by
the Prefect task that handed it over, so it reaches the console and the UI either way.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from tasks import storage

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
LOG_TOPIC = "opengpt2-log"
FORWARDED = logging.getLogger("tasks")  # every module under tasks/ logs below it

CLIENT: ContextVar[Client | None] = ContextVar("opengpt2_dask_client", default=None)  # set by `attached`
_sinks: dict[int, Callable[[logging.LogRecord], None]] = {}  # thread id -> where its records go meanwhile
_loggers: dict[str, logging.Logger | logging.LoggerAdapter] = {}  # call key -> the submitting task's logger


class Dispatch(logging.Handler):
    """The one handler of `tasks`, which no longer propagates: a record goes to the sink of the thread
    that logged it while that thread runs a call handed over (`forwarding`), else on to the root
    logger's handlers, as propagation would take it. `tasks` is held at INFO for the sinks, so a
    record below the level its logger would have without that is dropped, as before. Threads never
    change the logger, so calls on many threads forward at once safely."""

    def __init__(self, replaced_level: int):
        super().__init__()
        self.replaced_level = replaced_level  # the level of `tasks` before it was held at INFO

    def emit(self, record: logging.LogRecord) -> None:
        sink = _sinks.get(record.thread)
        if sink is not None:
            if record.levelno >= logging.INFO:
                sink(record)
        elif record.levelno >= self.level_without_hold(record.name):
            for handler in logging.getLogger().handlers:  # what propagation does; those also on `tasks` had it
                if handler not in FORWARDED.handlers and record.levelno >= handler.level:
                    handler.handle(record)

    def level_without_hold(self, name: str) -> int:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            held = logger is FORWARDED and logger.level == logging.INFO
            level = self.replaced_level if held else logger.level
            if level:
                return level
            logger = logger.parent
        return logging.WARNING


def install_dispatch() -> None:
    """Route `tasks`'s records through `Dispatch` (once per process, at import)."""
    if not any(isinstance(h, Dispatch) for h in FORWARDED.handlers):
        FORWARDED.addHandler(Dispatch(FORWARDED.level))
        FORWARDED.setLevel(min(FORWARDED.level or logging.INFO, logging.INFO))
        FORWARDED.propagate = False


install_dispatch()


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
    """Send every `on_cluster` call made in this context (and in the task threads it starts) to
    `client`'s workers while open, each worker (and any that joins later) reading and writing files
    with the `store` settings; yields how many calls run at once."""
    client.register_plugin(store_plugin(store))
    client.subscribe_topic(LOG_TOPIC, log_forwarded)
    token = CLIENT.set(client)
    try:
        yield cluster_threads()
    finally:
        CLIENT.reset(token)
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


_pace_lock = threading.Lock()
_pace_next: dict[str, float] = {}


def pace(name: str, per_s: float) -> None:
    """Wait for the next free moment of the service `name`, which gets at most `per_s` calls a second
    from the whole run: across the Dask cluster when called on a worker (the next free moment is a
    Dask `Variable`, taken under a Dask `Lock`), else across this process's threads."""
    try:
        from distributed import Lock, Variable, get_worker

        get_worker()
    except (ImportError, ValueError):  # not on a Dask worker
        with _pace_lock:
            slot = max(time.time(), _pace_next.get(name, 0.0))
            _pace_next[name] = slot + 1 / per_s
    else:
        with Lock(f"opengpt2-pace-{name}"):
            shared = Variable(f"opengpt2-pace-{name}")
            try:
                slot = max(time.time(), shared.get(timeout=0.1))
            except TimeoutError:  # the first call of the run
                slot = time.time()
            shared.set(slot + 1 / per_s)
    time.sleep(max(0.0, slot - time.time()))


def cluster_threads() -> int | None:
    """How many calls the attached cluster runs at once (None: no cluster attached)."""
    client = CLIENT.get()
    return sum(client.nthreads().values()) if client else None


def on_cluster(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a worker of the attached cluster, else in this thread; either way what it logs
    under `tasks` at INFO and above is logged by this thread's run logger. Dask reruns a call whose
    worker died on another worker."""
    logger, client = run_logger(), CLIENT.get()
    if client is None:
        outside_a_run = logger is FORWARDED  # the records stay where they are
        with nullcontext() if outside_a_run else forwarding(lambda r: logger.log(r.levelno, r.getMessage())):
            return fn(*args)
    key = f"{fn.__name__}-{uuid.uuid4().hex}"  # how the call shows in Dask's dashboard
    _loggers[key] = logger
    try:
        return client.submit(forwarding_to_client, key, fn, *args, key=key).result()
    finally:
        _loggers.pop(key, None)


def cluster_map(fn: Callable[..., T], *iterables: Sequence[Any]) -> list[T]:
    """`fn` over the items of `iterables` (as `map` takes them) on the attached cluster's workers,
    as one Dask map, else one after another in this thread."""
    client = CLIENT.get()
    if client is None:
        return [fn(*args) for args in zip(*iterables)]
    return client.gather(client.map(fn, *iterables, pure=False))


@contextmanager
def forwarding(send: Callable[[logging.LogRecord], None]) -> Iterator[None]:
    """Hand `send` every record this thread logs under `tasks` at INFO and above while open, instead
    of to the handlers above (the copy sent on is the one shown)."""
    thread = threading.get_ident()
    outer = _sinks.get(thread)
    _sinks[thread] = send
    try:
        yield
    finally:
        if outer is None:
            _sinks.pop(thread, None)
        else:
            _sinks[thread] = outer


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
