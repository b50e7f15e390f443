"""`make dashboard`: save the training dashboard (tasks/lm/dashboard.py) to the W&B project
`logger.project`; needs an online W&B login (WANDB_API_KEY, and WANDB_ENTITY or your default)."""
from __future__ import annotations

import os
from typing import Any

from flows.common import command
from tasks.errors import UserError
from tasks.lm.dashboard import training_workspace


def save_dashboard(cfg: dict[str, Any]) -> None:
    if cfg["logger"].get("mode") != "online" or not os.environ.get("WANDB_API_KEY"):
        raise UserError("make dashboard saves a view to your W&B project: set WANDB_API_KEY and "
                        "ARGS=\"logger.mode=online\" (runs stay offline otherwise)")
    import wandb

    entity = os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
    workspace = training_workspace(entity, cfg["logger"]["project"]).save()
    print(f"saved: {workspace.url}")


main = command(save_dashboard)


if __name__ == "__main__":
    main()
