"""Generation flow: print the prompt and a sampled continuation from a checkpoint."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import checkpoint_path, command, load_config
from tasks.lm.generate import generate_task


@flow(name="generate")
def generate_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None) -> list[str]:
    """Continuations of `cfg.prompt` from `cfg.checkpoint` (default: the last of `run_name`), streamed."""
    cfg = cfg or load_config(overrides)  # a deployment run passes Hydra overrides instead of a config
    return generate_task(checkpoint_path(cfg), cfg)


def run(cfg: dict[str, Any]) -> None:
    checkpoint_path(cfg)  # checked before the flow starts: a mistake is one line
    generate_flow(cfg)


main = command(run)


if __name__ == "__main__":
    main()
