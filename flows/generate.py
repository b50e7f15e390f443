"""Generation flow: print the prompt and a sampled continuation from a checkpoint."""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig
from prefect import flow

from flows.common import CONF_DIR, checkpoint_path, load_config, to_dict
from tasks.lm.generate import generate_task


@flow(name="generate")
def generate_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None) -> list[str]:
    """Continuations of `cfg.prompt` from `cfg.checkpoint` (default: the last of `run_name`), streamed."""
    cfg = cfg or load_config(overrides)  # a deployment run passes Hydra overrides instead of a config
    return generate_task(checkpoint_path(cfg), cfg)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    generate_flow(to_dict(cfg))


if __name__ == "__main__":
    main()
