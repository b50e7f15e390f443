"""Evaluation flow: strided perplexity of a checkpoint on the corpus val split."""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import CONF_DIR, cached, checkpoint_path, to_dict, token_dir
from tasks.evaluate import evaluate_task


@flow(name="evaluate", log_prints=True)
def evaluate_flow(cfg: dict[str, Any]) -> dict[str, float]:
    """Perplexity of `cfg.checkpoint` (default: the last of `run_name`) on the val split."""
    metrics = cached(evaluate_task, cfg)(checkpoint_path(cfg), str(token_dir(cfg)), cfg["eval"])
    table = "| metric | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v:,.3f} |" for k, v in metrics.items())
    create_markdown_artifact(table, key="evaluation", description="Zero-shot evaluation")
    print(table)
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate_flow(to_dict(cfg))


if __name__ == "__main__":
    main()
