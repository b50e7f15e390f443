"""The corpus funnel: how many records survive each stage, as Markdown, JSON, a PNG chart and a W&B run."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from model.lineage import corpus_artifact
from tasks import storage
from tasks.corpus.step import funnel_rows

SOURCE_ROWS = [("records read", "urls/records_read"), ("URLs kept", "urls/kept"), ("fetched", "fetch/ok"),
               ("from web archives", ("fetch/archive_commoncrawl", "fetch/archive_wayback"))]
FINAL_ROWS = [("after dedup", "dedup/kept"), ("≥ min tokens", "tokenize/kept"), ("tokens", "tokenize/tokens")]


def funnel(stats: dict[str, int], pipeline: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    """(stage, count) from records read to tokens written, with a row for each enabled pipeline step
    (a row of several counters counts their sum)."""
    return [(label, sum(int(stats.get(k, 0)) for k in ((key,) if isinstance(key, str) else key)))
            for label, key in SOURCE_ROWS + funnel_rows(pipeline) + FINAL_ROWS]


def breakdown(stats: dict[str, int], prefix: str) -> dict[str, int]:
    """The counters whose names start with `prefix`, e.g. fetch outcomes or languages, largest first."""
    items = {k[len(prefix):].lstrip("/_"): v for k, v in stats.items() if k.startswith(prefix)}
    return dict(sorted(items.items(), key=lambda kv: -kv[1]))


def funnel_markdown(stats: dict[str, int], pipeline: dict[str, dict[str, Any]], sizes: dict[str, int] | None = None) -> str:
    """The funnel, the size of each stage's output, and every counter behind them, as Markdown."""
    rows = "\n".join(f"| {label} | {count:,} |" for label, count in funnel(stats, pipeline))
    text = f"## Corpus funnel\n\n| stage | count |\n|---|---:|\n{rows}\n"
    if sizes:
        text += "\n| stage output | bytes |\n|---|---:|\n" + "\n".join(f"| {k} | {v:,} |" for k, v in sizes.items()) + "\n"
    details = "\n".join(f"| `{key}` | {value:,} |" for key, value in sorted(stats.items()))
    return text + f"\n### All counters\n\n| counter | value |\n|---|---:|\n{details}\n"


def plot_funnel(stats: dict[str, int], pipeline: dict[str, dict[str, Any]], path: Path) -> None:
    """Three panels: documents left after each stage, fetch outcomes, and languages."""
    # Imported here: Dask workers import this module with the flow's, and matplotlib (~40 MiB) is only
    # needed for this one picture at the end of a run.
    from matplotlib.figure import Figure

    panels = [("Documents after each stage", dict(funnel(stats, pipeline)[:-1])),
              ("Fetch outcomes", breakdown(stats, "fetch")),
              ("Languages (top 10)", dict(list(breakdown(stats, "language/lang").items())[:10]))]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, (title, counts) in zip(axes, panels):
        labels, values = list(counts)[::-1], list(counts.values())[::-1]
        ax.barh(labels, values, color="#4c72b0")
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:,}", va="center", fontsize=8)
        ax.set_title(title)
        ax.margins(x=0.2)
    fig.suptitle(f"Corpus funnel: {stats.get('tokenize/tokens', 0):,} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(stats: dict[str, int], sizes: dict[str, int], out_dir: Path,
                 pipeline: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Write funnel.md, funnel.json and funnel.png to `out_dir`; returns their paths."""
    paths = {"md": out_dir / "funnel.md", "json": out_dir / "funnel.json", "png": out_dir / "funnel.png"}
    paths["md"].write_text(funnel_markdown(stats, pipeline, sizes))
    paths["json"].write_text(json.dumps({"funnel": dict(funnel(stats, pipeline)), "bytes": sizes, "stats": stats},
                                        indent=2))
    plot_funnel(stats, pipeline, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def log_to_wandb(stats: dict[str, int], report: dict[str, str], logger: dict[str, Any], name: str,
                 pipeline: dict[str, dict[str, Any]], tokens_dir: str) -> str | None:
    """Log the funnel as a W&B run (job type "corpus"): counters, a table, the chart, and the corpus
    version as a `dataset` artifact (its manifest). Returns the run's folder."""
    if not logger["enabled"]:
        return None
    import wandb

    Path(logger["save_dir"]).mkdir(parents=True, exist_ok=True)
    with wandb.init(project=logger["project"], name=name, job_type="corpus", dir=logger["save_dir"],
                    mode=logger["mode"]) as run:
        run.log({f"corpus/{k}": v for k, v in stats.items()})
        rows = [list(r) for r in funnel(stats, pipeline)]
        run.log({"corpus/funnel": wandb.Table(columns=["stage", "count"], data=rows),
                 "corpus/funnel_chart": wandb.Image(report["png"])})
        if storage.is_local(tokens_dir):  # an artifact of files on local disk
            run.log_artifact(corpus_artifact(tokens_dir))
        return str(Path(run.dir).parent)


def merge_stats(*results: dict[str, Any]) -> dict[str, int]:
    """The counters of every task of a run (shards, stages), added up."""
    total: Counter = Counter()
    for result in results:
        total.update(result["stats"])
    return dict(sorted(total.items()))
