"""Export flow: a checkpoint (Lightning file or DeepSpeed ZeRO folder) as a Hugging Face folder that
`transformers.pipeline("text-generation", model=folder)` loads: weights, tokenizer, model card."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import checkpoint_path, command, flow_config, run_form_args
from flows.forms import ExportForm
from tasks.lm.export import export_hf


@flow(name="export", log_prints=True)
@run_form_args
def export_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None,
                settings: ExportForm | None = None) -> str:
    """Write `checkpoint` (default: the last of `run_name`) to `export_dir`; returns the folder."""
    cfg = flow_config(cfg, overrides, settings)
    out = export_hf(checkpoint_path(cfg), cfg["export_dir"])
    print(f"wrote {out}")
    return out


main = command(export_flow, checkpoint_path)


if __name__ == "__main__":
    main()
