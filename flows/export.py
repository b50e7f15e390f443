"""Export a checkpoint (Lightning file or DeepSpeed ZeRO folder) as a transformers GPT-2 folder."""
from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from flows.common import CONF_DIR, checkpoint_path, to_dict
from model.lit import load_gpt


def export(cfg: dict[str, Any]) -> str:
    """Write `checkpoint` (default: the last of `run_name`) to `export_dir` in HF format; returns the folder."""
    load_gpt(checkpoint_path(cfg)).to_hf(cfg["export_dir"])
    return cfg["export_dir"]


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(f"wrote {export(to_dict(cfg))}")


if __name__ == "__main__":
    main()
