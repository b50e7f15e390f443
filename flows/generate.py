"""Generation flow: print the prompt and a sampled continuation from a checkpoint."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import checkpoint_path, command, flow_config, run_form_args
from flows.forms import GenerateForm
from tasks.lm.generate import generate_task


@flow(name="generate")
@run_form_args
def generate_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None,
                  settings: GenerateForm | None = None) -> list[str]:
    """Continuations of `cfg.prompt` from `cfg.checkpoint` (default: the last of `run_name`), streamed."""
    cfg = flow_config(cfg, overrides, settings)
    return generate_task(checkpoint_path(cfg), cfg)


main = command(generate_flow, checkpoint_path)


if __name__ == "__main__":
    main()
