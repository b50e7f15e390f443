"""Corpus flow: Pushshift dumps -> URLs -> pages -> text -> English -> deduplicated -> token shards."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from prefect import Task, flow
from prefect.artifacts import create_markdown_artifact

from flows.common import CONF_DIR, cached, load_config, task_runner, to_dict, token_dir
from sample.web import serve_sample_web
from tasks.contamination import decontaminate_task
from tasks.dedup import dedup_task
from tasks.extract import extract_task
from tasks.fetch import fetch_task
from tasks.language import language_task
from tasks.report import funnel_markdown, log_to_wandb, merge_stats, output_sizes, write_report
from tasks.tokenize import tokenize_task
from tasks.urls import urls_task


def crawl(cfg: dict[str, Any], work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The urls and fetch stages: Reddit dumps -> article URLs -> WARC of fetched pages."""
    c = cfg["corpus"]
    with serve_sample_web() if c["serve_sample_web"] else nullcontext() as proxy:
        urls = run(urls_task, cfg, c["dumps"], str(work / "urls.jsonl.zst"), c["urls"], c["seen_urls_db"])
        pages = run(fetch_task, cfg, urls["path"], str(work / "fetch"), c["fetch"], proxy)
    return urls, pages


def run(task: Task, cfg: dict[str, Any], *args: Any) -> Any:
    """Run a stage on the flow's task runner (threads, or Dask workers) and wait for its result."""
    return cached(task, cfg).submit(*args).result()


@flow(name="corpus", log_prints=True)
def corpus_flow(cfg: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Build the token corpus described by `cfg.corpus`; returns its folder and funnel counts.

    The stages run on the task runner that `cfg.runner` picks (local threads or Dask).
    """
    cfg = cfg or load_config(overrides)  # a deployment run passes Hydra overrides instead of a config
    stages = build_corpus.with_options(task_runner=task_runner(cfg))(cfg)
    stats, sizes = merge_stats(*stages.values()), output_sizes(stages)
    report = write_report(stats, sizes, Path(cfg["corpus"]["out_dir"]))
    report["wandb"] = log_to_wandb(stats, report, cfg["logger"], f"corpus-{cfg['corpus']['name']}")
    create_markdown_artifact(funnel_markdown(stats, sizes), key="corpus-funnel", description="Corpus funnel")
    print(funnel_markdown(stats, sizes))
    return {"data_dir": stages["tokenize"]["path"], "stats": stats, "report": report}


@flow(name="build-corpus", log_prints=True)
def build_corpus(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stages, in order; returns each stage's output path and counters. With
    `corpus.source=warc` the pages come from `corpus.warc_files` (e.g. Common Crawl) instead."""
    c = cfg["corpus"]
    work = Path(c["out_dir"]) / "stages"
    urls, pages = crawl(cfg, work) if c["source"] == "fetch" else (None, None)
    warcs = [pages["path"]] if pages else c["warc_files"]
    texts = run(extract_task, cfg, urls and urls["path"], warcs, str(work / "extracted.jsonl.zst"), c["extract"])
    english = run(language_task, cfg, texts["path"], str(work / "english.jsonl.zst"), c["language"])
    unique = run(dedup_task, cfg, english["path"], str(work / "unique.jsonl.zst"), c["dedup"], c["dedup"]["index_path"])
    clean = None
    if c["decontaminate"]["enabled"]:  # drop documents that overlap the evaluation sets
        clean = run(decontaminate_task, cfg, unique["path"], str(work / "decontaminated.jsonl.zst"), cfg["eval"],
                    c["decontaminate"]["max_overlap"])
    stages = {k: v for k, v in dict(urls=urls, fetch=pages, extract=texts, language=english, dedup=unique,
                                    decontaminate=clean).items() if v}
    stages["tokenize"] = run(tokenize_task, cfg, (clean or unique)["path"], str(token_dir(cfg)), c["tokenize"],
                             merge_stats(*stages.values()))
    return stages


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    corpus_flow(to_dict(cfg))


if __name__ == "__main__":
    main()
