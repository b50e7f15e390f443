"""Training stage: fit GPT-2 with Lightning (+ DeepSpeed) on the corpus token shards, tracked in W&B."""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from model.callbacks import ProgressLines
from model.train import fit
from tasks.caching import FilesAndCode


@task(name="train", cache_policy=FilesAndCode(files=("data_dir", "init_from")))
def train_task(cfg: dict[str, Any], data_dir: str, out: str, init_from: str | None = None) -> dict[str, Any]:
    """Fit on the corpus in `data_dir`, from the transformers folder `init_from` when given, writing
    checkpoints to `out`."""
    return fit(cfg, data_dir, out, [ProgressLines(get_run_logger().info)], init_from=init_from)
