"""Export flow: a checkpoint (Lightning file or DeepSpeed ZeRO folder) as a Hugging Face folder that
`transformers.pipeline("text-generation", model=folder)` loads: weights, tokenizer, model card."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.common import checkpoint_path, command, flow_config, token_dir
from flows.forms import ExportForm
from tasks.lm.export import export_hf


@flow(name="export", log_prints=True)
def export_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None,
                settings: ExportForm | None = None) -> str:
    """Write `checkpoint` (default: the last of `run_name`) to `export_dir`; returns the folder.

    Args:
        cfg: a whole composed config, for Python callers; the other two are ignored then.
        overrides: advanced: any other setting as Hydra overrides, e.g. ["optim.lr=3e-4"].
        settings: the settings most often changed; an empty field keeps conf/'s value.
    """
    cfg = flow_config(cfg, overrides, settings)  # a deployment run passes a form and overrides
    out = export_hf(checkpoint_path(cfg), cfg["export_dir"], str(Path(token_dir(cfg), "manifest.json")))
    print(f"wrote {out}")
    return out


def run(cfg: dict[str, Any]) -> None:
    checkpoint_path(cfg)  # checked before the flow starts: a mistake is one line
    export_flow(cfg)


main = command(run)


if __name__ == "__main__":
    main()
