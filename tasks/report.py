"""The corpus funnel: how many records survive each stage, as Markdown, JSON and a PNG chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FUNNEL = [("records read", "urls/records_read"), ("URLs kept", "urls/kept"), ("fetched", "fetch/ok"),
          ("extracted", "extract/kept"), ("English", "language/kept"), ("after dedup", "dedup/kept"),
          ("≥ min tokens", "tokenize/kept"), ("tokens", "tokenize/tokens")]


def funnel(stats: dict[str, int]) -> list[tuple[str, int]]:
    """(stage, count) from records read to tokens written."""
    return [(label, int(stats.get(key, 0))) for label, key in FUNNEL]


def funnel_markdown(stats: dict[str, int]) -> str:
    """The funnel and every counter behind it, as Markdown tables."""
    rows = "\n".join(f"| {label} | {count:,} |" for label, count in funnel(stats))
    details = "\n".join(f"| `{key}` | {value:,} |" for key, value in sorted(stats.items()))
    return (f"## Corpus funnel\n\n| stage | count |\n|---|---:|\n{rows}\n\n"
            f"### All counters\n\n| counter | value |\n|---|---:|\n{details}\n")


def write_report(stats: dict[str, int], out_dir: Path) -> dict[str, str]:
    """Write funnel.md, funnel.json and funnel.png to `out_dir`; returns their paths."""
    paths = {"md": out_dir / "funnel.md", "json": out_dir / "funnel.json", "png": out_dir / "funnel.png"}
    paths["md"].write_text(funnel_markdown(stats))
    paths["json"].write_text(json.dumps({"funnel": dict(funnel(stats)), "stats": stats}, indent=2))
    stages = funnel(stats)[:-1]  # tokens are on another scale
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([s for s, _ in stages][::-1], [c for _, c in stages][::-1], color="#4c72b0")
    for i, (_, count) in enumerate(stages[::-1]):
        ax.text(count, i, f" {count:,}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title(f"Corpus funnel ({stats.get('tokenize/tokens', 0):,} tokens)")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return {k: str(v) for k, v in paths.items()}


def merge_stats(*results: dict[str, Any]) -> dict[str, int]:
    """All the stage counters of a run in one dict."""
    return {k: v for result in results for k, v in result["stats"].items()}
