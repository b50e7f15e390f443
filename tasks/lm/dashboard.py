"""The W&B training dashboard as code: a saved workspace view of a project (wandb-workspaces), with
panels on the metrics training runs log (see model/callbacks.py and model/lit.py)."""
from __future__ import annotations

from typing import Any

SECTIONS = {  # section -> (panel title, x axis, metrics)
    "Loss": [("loss vs tokens", "perf/tokens_seen", ["train/loss", "val/loss"]),
             ("val perplexity (windowed)", "perf/tokens_seen", ["val/perplexity"])],
    "Speed": [("tokens/s", "Step", ["perf/tokens_per_s"]), ("MFU", "Step", ["perf/mfu"])],
    "Optimizer": [("learning rate", "Step", ["lr"]), ("gradient norm", "Step", ["grad_norm"])],
}


def training_workspace(entity: str, project: str) -> Any:
    """The dashboard: runs grouped by model size (their `group`), the panels of SECTIONS."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=name, is_open=True,
                           panels=[wr.LinePlot(title=title, x=x, y=metrics) for title, x, metrics in panels])
                for name, panels in SECTIONS.items()]
    return ws.Workspace(entity=entity, project=project, name="opengpt2 training", sections=sections,
                        runset_settings=ws.RunsetSettings(groupby=[ws.Metric("group")]))


def panel_metrics(workspace: Any) -> set[str]:
    """Every metric a workspace's panels plot."""
    return {metric for section in workspace.sections for panel in section.panels for metric in panel.y}
