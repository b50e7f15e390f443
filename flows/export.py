"""Export a checkpoint (Lightning file or DeepSpeed ZeRO folder) as a transformers GPT-2 folder."""
from __future__ import annotations

from typing import Any


from flows.common import checkpoint_path, command
from model.lit import load_gpt


def export(cfg: dict[str, Any]) -> str:
    """Write `checkpoint` (default: the last of `run_name`) to `export_dir` in HF format; returns the folder."""
    load_gpt(checkpoint_path(cfg)).to_hf(cfg["export_dir"])
    return cfg["export_dir"]


main = command(lambda cfg: print(f"wrote {export(cfg)}"))


if __name__ == "__main__":
    main()
