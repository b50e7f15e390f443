"""Generation flow: print the prompt and a sampled continuation from a checkpoint."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import checkpoint_path, command, flow_config
from flows.forms import GenerateForm
from tasks.lm.generate import generate_task


@flow(name="generate")
def generate_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None,
                  settings: GenerateForm | None = None) -> list[str]:
    """Continuations of `cfg.prompt` from `cfg.checkpoint` (default: the last of `run_name`), streamed.

    Args:
        cfg: a whole composed config, for Python callers; the other two are ignored then.
        overrides: advanced: any other setting as Hydra overrides, e.g. ["optim.lr=3e-4"].
        settings: the settings most often changed; an empty field keeps conf/'s value.
    """
    cfg = flow_config(cfg, overrides, settings)  # a deployment run passes a form and overrides
    return generate_task(checkpoint_path(cfg), cfg)


def run(cfg: dict[str, Any]) -> None:
    checkpoint_path(cfg)  # checked before the flow starts: a mistake is one line
    generate_flow(cfg)


main = command(run)


if __name__ == "__main__":
    main()
