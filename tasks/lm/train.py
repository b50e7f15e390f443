"""Training stage: fit GPT-2 with Lightning (+ DeepSpeed) on the corpus token shards, tracked in W&B."""
from __future__ import annotations

import signal
from typing import Any

from prefect import get_run_logger, task

from model.callbacks import ProgressLines
from model.train import fit
from tasks.caching import FilesAndCode
from tasks.errors import Interrupted


@task(name="train", cache_policy=FilesAndCode(files=("data_dir", "init_from")))
def train_task(cfg: dict[str, Any], data_dir: str, out: str, init_from: str | None = None) -> dict[str, Any]:
    """Fit on the corpus in `data_dir`, from the transformers folder `init_from` when given, writing
    checkpoints to `out`. Interrupted (the task fails, uncached) when a signal stopped the run."""
    result = fit(cfg, data_dir, out, [ProgressLines(get_run_logger().info)], init_from=init_from)
    if result["interrupted"]:
        raise Interrupted(f"interrupted by {result['interrupted']} at step {result['global_step']} of "
                          f"{result['max_steps']}: rerun to resume from {result['checkpoint']}",
                          signal.Signals[result["interrupted"]])
    return result
