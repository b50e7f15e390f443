"""What every flow shares: config loading, cached tasks, and where a run's files go."""
from __future__ import annotations

import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from flows.api import temporary_api, wait_for_api
from flows.forms import form_overrides
from flows.schema import check
from tasks import storage
from tasks.errors import STOPPING, Interrupted, MissingInput, UserError

if TYPE_CHECKING:  # config loading stays importable where only the training stack is installed
    from prefect import Task
    from prefect.futures import PrefectFuture

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")

# `${repo:sample/x}` in conf/ is an absolute path inside the checkout, whatever the working directory.
OmegaConf.register_new_resolver("repo", lambda rel="": str(REPO / rel), replace=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A resolved plain-dict copy of a Hydra config, as Prefect flow parameters must be, checked
    against `flows.schema` (ConfigError names the first wrong keys)."""
    return check(OmegaConf.to_container(cfg, resolve=True))


def command(run: Callable[..., Any], check: Callable[[dict[str, Any]], Any] | None = None) -> Callable[[], None]:
    """The command line of a flow: `python -m flows.X key=value …` composes the config from conf/ and
    the overrides, checks it against the schema and then with `check` (its inputs), and calls `run`:
    a Prefect flow with `overrides=` (its run then lists them in the Prefect UI), else with the config. A user's mistake (a malformed or unknown override, a value not allowed, a missing input:
    any UserError) is one line on stderr and exit code 2, before the flow starts; a run stopped by
    SIGTERM or SIGINT, one line and exit code 128 + the signal's number; a store that kept failing
    after every retry, one line naming the file and exit code 1. Hydra's own flags
    (`--cfg job`, `--help`, `-m`) go through Hydra's command line. The flow reports to PREFECT_API_URL,
    or to a temporary server started first (`flows.api`)."""
    def checked_run(cfg: dict[str, Any], overrides: list[str]) -> None:
        if check:
            check(cfg)
        from prefect import Flow

        if isinstance(run, Flow):
            wait_for_api()
            run(overrides=overrides)
        else:
            run(cfg)

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def hydra_main(cfg: DictConfig) -> None:
        checked_run(to_dict(cfg), list(HydraConfig.get().overrides.task))

    def main() -> None:
        overrides = sys.argv[1:]
        try:
            with interruptible(), temporary_api():
                if any(arg.startswith("-") for arg in overrides):
                    hydra_main()
                else:
                    checked_run(load_config(overrides), overrides)
        except (UserError, HydraException, OmegaConfBaseException) as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(2) from None
        except Interrupted as err:
            # API connections the signal cut short would warn at exit, after the line that says why
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(128 + err.signum) from None
        except storage.StoreError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(1) from None

    return main


@contextmanager
def stopping_on_signal() -> Iterator[None]:
    """Around a flow's body: a signal's exception unwinding it (Prefect's TerminationSignal for SIGTERM,
    KeyboardInterrupt) sets STOPPING before Prefect's task runner waits for the tasks in flight, so
    that none is retried and a fetch stops starting pages."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        STOPPING.set()
        raise


def unless_stopping(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition for any failure: retried, unless the run is being stopped."""
    return not STOPPING.is_set()


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted in the main thread while open, so a stopped flow run ends
    Failed (never Completed, never cached) and the command's exit handlers run. Training catches
    them itself for a while, to save its checkpoint first."""
    def stop(signum: int, frame: Any) -> None:
        STOPPING.set()
        raise Interrupted(f"stopped by {signal.Signals(signum).name}: rerun to resume (finished work is kept)", signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def one_line(err: Exception) -> str:
    """An error's message on one line (Hydra's span several, with hints)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


GIVEN: ContextVar[dict[str, Any] | None] = ContextVar("GIVEN", default=None)


@contextmanager
def given(cfg: dict[str, Any]) -> Iterator[None]:
    """Flows called inside run the composed config `cfg` rather than composing their own: how a flow
    hands its config to its subflows, and how Python callers (tests, notebooks) pass one."""
    token = GIVEN.set(cfg)
    try:
        yield
    finally:
        GIVEN.reset(token)


def flow_config(flow_fn: Callable, params: dict[str, Any]) -> dict[str, Any]:
    """A flow's config: the one `given` holds, else conf/ with the run form's fields (`params`, the
    flow's arguments) and then its advanced `overrides` applied."""
    fields = form_overrides(flow_fn, params)
    cfg = GIVEN.get()
    if cfg is None:
        return load_config(fields + list(params["overrides"]))
    if fields or params["overrides"]:
        raise TypeError(f"{flow_fn.__name__}: a flow run inside given(cfg) takes every setting from cfg, "
                        f"not {fields + list(params['overrides'])}")
    return cfg


def load_config(overrides: list[str] | None = None, config_name: str = "config") -> dict[str, Any]:
    """Compose the Hydra config outside a Hydra app (tests, notebooks)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_dict(compose(config_name=config_name, overrides=overrides or []))


def cached(task: Task, cfg: dict[str, Any]) -> Task:
    """The task with its results, and so its cache, stored under the data folder.

    Deleting the data folder then also forgets what was cached; `refresh=true` recomputes.
    """
    return task.with_options(result_storage=Path(cfg["paths"]["data"]) / "prefect-results",
                             refresh_cache=cfg["refresh"])


def store_task(task: Task, cfg: dict[str, Any]) -> Task:
    """`cached(task)`, run again `store.task_retries` times when the machine failed it: a StoreError
    (an outage past the store's own retries) or a Dask worker lost too often. Never for bad input or
    a bug, which fail at once."""
    store = cfg["store"]
    return cached(task, cfg).with_options(retries=store["task_retries"], retry_delay_seconds=store["task_retry_delay_s"],
                                          retry_condition_fn=failed_on_the_machine)


def failed_on_the_machine(task: Task, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition: whether the run failed on the machine's side, not on its input."""
    from distributed import KilledWorker

    error = state.result(raise_on_failure=False)
    return isinstance(error, (storage.StoreError, KilledWorker)) and not STOPPING.is_set()


@contextmanager
def task_runner(cfg: dict[str, Any]) -> Iterator[Any]:
    """The Prefect task runner that `cfg.runner` names, open for a flow's run. Tasks run on threads of
    this process; with runner=dask their work goes to a Dask cluster (a scheduler at `address`, or a
    LocalCluster of `n_workers` processes started here, under `dask_config`), two tasks in flight per
    worker thread so that the next one waits at Dask when a worker frees up. Workers need no Prefect API.
    Files are read and written with `cfg.store`'s retries, here and in every worker."""
    from prefect.task_runners import ThreadPoolTaskRunner

    storage.configure(cfg["store"])
    runner = cfg["runner"]
    if runner["type"] != "dask":
        yield ThreadPoolTaskRunner(max_workers=runner["max_workers"])
        return
    import dask
    from distributed import Client, LocalCluster

    from tasks.cluster import attached

    if runner["address"]:
        cluster = nullcontext(runner["address"])
    else:
        with main_module_hidden(), dask.config.set(runner["dask_config"] or {}):
            cluster = LocalCluster(n_workers=runner["n_workers"], threads_per_worker=1, dashboard_address=None)
    with cluster as scheduler, Client(scheduler) as client, attached(client, cfg["store"]) as threads:
        yield ThreadPoolTaskRunner(max_workers=2 * threads)


@contextmanager
def main_module_hidden() -> Iterator[None]:
    """Processes started meanwhile skip importing this program's main module. A spawned process
    imports its parent's main module first (multiprocessing's rule); ours is a flow module, which
    imports Prefect and the flows, and Dask workers need neither (~50 MiB each): they start as from an
    interactive session, which has no main module to import."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def wait_with_progress(futures: list[PrefectFuture], what: str, upstream: list[PrefectFuture] = ()) -> list[Any]:
    """The futures' results in submission order, with a progress bar (rate, ETA) on the console and a
    progress artifact in the Prefect UI while they complete. A failed `upstream` future (one these
    wait for) raises its own error first: it says why, where its dependents only say they never ran."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.futures import as_completed

    artifact = create_progress_artifact(0.0, description=f"corpus: {what}")
    with tqdm(total=len(futures), desc=what, unit="task") as bar:
        for done, _ in enumerate(as_completed(futures), 1):
            bar.update()
            update_progress_artifact(artifact, 100.0 * done / len(futures))
    for future in upstream:
        if future.state.is_failed():
            future.result()
    return [f.result() for f in futures]


def token_dir(cfg: dict[str, Any]) -> str:
    """Where the corpus flow writes the token shards and manifest (a path or a store URL)."""
    return storage.join(cfg["corpus"]["out_dir"], "tokens")


def run_dir(cfg: dict[str, Any]) -> Path:
    """Where training writes the checkpoints of `run_name`."""
    return Path(cfg["paths"]["data"]) / "checkpoints" / cfg["run_name"]


def checkpoint_path(cfg: dict[str, Any]) -> str:
    """The checkpoint to evaluate or sample: `checkpoint`, else the last one of `run_name`, checked to
    be a checkpoint before anything in it is unpickled, then to load weights-only (a DeepSpeed folder
    is consolidated into one file first)."""
    path = cfg.get("checkpoint") or str(run_dir(cfg) / "last.ckpt")
    if not Path(path).exists():
        raise MissingInput(f"no checkpoint at {path}: train one with `make train` (run_name={cfg['run_name']}) "
                           "or pass checkpoint=PATH (a .ckpt, a DeepSpeed folder or a transformers GPT-2 folder)")
    from model.checkpoint import NotACheckpoint, UnsafeCheckpoint, check_weights_only, checkpoint_kind

    try:
        if checkpoint_kind(Path(path)) != "transformers":
            check_weights_only(path)
    except (NotACheckpoint, UnsafeCheckpoint) as err:
        raise UserError(str(err)) from None
    return path


def check_benchmarks(benchmarks_dir: str | None, benchmarks: dict[str, str], key: str) -> None:
    """MissingInput when benchmarks were asked for (`key` is set) and their folder, or every file of
    them, is not there; a folder holding only some of them is fine (the others are skipped)."""
    if not benchmarks_dir:
        return
    if not Path(benchmarks_dir).is_dir():
        raise MissingInput(f"{key}={benchmarks_dir} does not exist")
    if not any((Path(benchmarks_dir) / relative).exists() for relative in benchmarks.values()):
        raise MissingInput(f"{key}={benchmarks_dir} holds none of the benchmark files "
                           f"({', '.join(benchmarks.values())})")
