"""Export flow: a checkpoint (Lightning file or DeepSpeed ZeRO folder) as a Hugging Face folder that
`transformers.pipeline("text-generation", model=folder)` loads: weights, tokenizer, model card."""
from __future__ import annotations

from prefect import flow

from flows import forms
from flows.common import checkpoint_path, command, flow_config
from tasks.lm.export import export_hf


@forms.run_form
@flow(name="export", log_prints=True)
def export_flow(model: forms.Model = forms.pick("model"), checkpoint: forms.Checkpoint = None,
                export_dir: forms.ExportDir = None, overrides: list[str] = ()) -> str:
    """Write `checkpoint` (default: the last of the run) to `export_dir`; returns the folder."""
    cfg = flow_config(export_flow.fn, locals())
    out = export_hf(checkpoint_path(cfg), cfg["export_dir"])
    print(f"wrote {out}")
    return out


main = command(export_flow, checkpoint_path)


if __name__ == "__main__":
    main()
