"""Corpus flow: Pushshift dumps -> URL shards -> per shard: fetch, then the `corpus.pipeline` steps ->
near-dup phases over all shards -> per shard: filter and tokenize -> token manifest."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture

from flows import forms
from flows.common import (cached, check_benchmarks, command, flow_config, store_task, task_runner,
                          stopping_on_signal, token_dir, unless_stopping, wait_with_progress)
from model.manifest import FILE, SPLITS, Manifest
from sample.web import Sample, serve_sample
from tasks import storage
from tasks.caching import code_version, targets
from tasks.cluster import cluster_threads
from tasks.corpus import shards
from tasks.corpus.dumpfile import BadDump, dump_format
from tasks.corpus.neardup import Source, dropped, offsets
from tasks.corpus.report import funnel, funnel_markdown, log_to_wandb, merge_stats, write_report
from tasks.corpus.prefect_tasks import (archive_fetch_task, archive_lookup_task, candidates_task, confirm_task,
                                        fetch_task, finish_task, shard_task, urls_task)
from tasks.corpus.shards import ShardPlan, ShardResult, plan_warc_shards
from tasks.corpus.step import enabled_steps
from tasks.errors import MissingInput, UserError


def fetched_shards(cfg: dict[str, Any], work: Path, proxy: str | None) -> tuple[list[ShardPlan], list[PrefectFuture], dict]:
    """URL shards from the dumps, each fetched live into its own WARC (unless `corpus.fetch.mode` is
    archive); returns the plan, the fetches and the URL stage's result."""
    c = cfg["corpus"]
    urls = store_task(urls_task, cfg).submit(c["dumps"], str(work / "urls"), c["urls"], c["shard_docs"],
                                         c["seen_urls_dir"]).result()
    plan = [ShardPlan(f"{i:05d}", str(work / "pages" / f"{i:05d}" / "pages.warc.gz"), urls=urls_path,
                      want_archive=c["fetch"]["mode"] == "live_then_archive")
            for i, urls_path in enumerate(urls["shards"])]
    if c["fetch"]["mode"] == "archive":
        return plan, [], urls
    fetch = cached(fetch_task, cfg).with_options(retries=c["fetch"]["task_retries"], retry_condition_fn=unless_stopping,
                                                 retry_delay_seconds=c["fetch"]["task_retry_delay_s"])
    return plan, [fetch.submit(shard.urls, str(Path(shard.warc).parent), c["fetch"], proxy) for shard in plan], urls


def archived_shards(cfg: dict[str, Any], work: Path, wanted: dict[str, str], urls: dict[str, str],
                    endpoints: dict | None) -> tuple[list[ShardPlan], list[PrefectFuture]]:
    """The web archives' pages of the wanted URLs ({shard: wanted file}), a shard of pages for each
    shard of URLs: one bulk lookup, then a fetch per shard."""
    f = cfg["corpus"]["fetch"]
    captures = cached(archive_lookup_task, cfg).submit(wanted, str(work / "archive" / "lookup"), f["archive"],
                                                       endpoints).result()
    fetch = cached(archive_fetch_task, cfg).with_options(retries=f["task_retries"], retry_condition_fn=unless_stopping,
                                                         retry_delay_seconds=f["task_retry_delay_s"])
    plan, fetches = [], []
    for shard, path in wanted.items():
        pages = work / "archive" / "pages" / shard
        fetches.append(fetch.submit(path, captures[shard], str(pages), f, endpoints))
        plan.append(ShardPlan(f"{shard}-archive", str(pages / "pages.warc.gz"), urls=urls[shard]))
    return plan, fetches


def run_shards(cfg: dict[str, Any], plan: list[ShardPlan], wait_for: list[PrefectFuture]) -> list[ShardResult]:
    """The per-document steps, one task per shard, each after its shard's fetch when there is one."""
    c = cfg["corpus"]
    task = store_task(shard_task, cfg)
    futures = [task.submit(shard, storage.join(c["out_dir"], "shards", shard.id), c["pipeline"], c["dedup"],
                           c["max_error_share"], cfg["refresh"], wait_for=wait_for[i:i + 1])
               for i, shard in enumerate(plan)]
    return wait_with_progress(futures, "shards", upstream=wait_for)


def earlier_sources(manifests: list[str]) -> list[Source]:
    """The kept documents of earlier corpus versions, as dedup sources that come first."""
    sources = []
    for path in manifests:
        manifest, folder = Manifest.from_json(storage.read_text(path)), path.rsplit("/", 1)[0]
        sources += [Source(storage.join(folder, s["docs"]), storage.join(folder, s["bands"]), s["n"], earlier=True)
                    for s in manifest.kept]
    return sources


def band_groups(bands: int, workers: int) -> list[list[int]]:
    """The LSH bands cut into tasks, in order: two tasks per worker (a task costs Prefect ~0.1 s, as
    much as a small corpus's band)."""
    tasks = min(bands, 2 * workers)
    return [group.tolist() for group in np.array_split(np.arange(bands), tasks)]


def dedup_phases(cfg: dict[str, Any], sources: list[Source], n_new: int) -> np.ndarray:
    """The dedup phases: candidates per band, exact confirmation per new shard, then the decision."""
    d = cfg["corpus"]["dedup"]
    pairs_dir = storage.join(cfg["corpus"]["out_dir"], "dedup")
    workers = cluster_threads() or cfg["runner"]["max_workers"]
    candidates = store_task(candidates_task, cfg)
    groups = wait_with_progress([candidates.submit(sources, g, pairs_dir, d["max_bucket"], d["chunk_docs"])
                                 for g in band_groups(d["bands"], workers)], "dedup bands")
    bands = [band for group in groups for band in group]
    slices = [[(band["path"], band["bounds"][s], band["bounds"][s + 1]) for band in bands]
              for s in range(len(sources) - n_new, len(sources))]
    confirmed = wait_with_progress([store_task(confirm_task, cfg).submit(shard, sources, d["threshold"], d["ngram"])
                                    for shard in slices], "dedup confirm")
    return dropped(np.array([p for part in confirmed for p in part], dtype=np.int64).reshape(-1, 2))


def tokenize_shards(cfg: dict[str, Any], plan: list[ShardPlan], sources: list[Source], drop: np.ndarray) -> list[dict]:
    """Filter and tokenize every new shard; returns each shard's token files and counters."""
    c, tokens = cfg["corpus"], token_dir(cfg)
    starts, first = offsets(sources), len(sources) - len(plan)

    def local(i: int) -> list[int]:  # the shard's dropped documents, by position in the shard
        lo, hi = starts[first + i], starts[first + i + 1]
        return (drop[(drop >= lo) & (drop < hi)] - lo).tolist()

    futures = [store_task(finish_task, cfg).submit(source, local(i), tokens, shard.id, c["tokenize"],
                                                   cfg["refresh"])
               for i, (shard, source) in enumerate(zip(plan, sources[first:]))]
    return wait_with_progress(futures, "tokenize")


def write_manifest(cfg: dict[str, Any], finished: list[dict], stats: dict[str, int]) -> bool:
    """tokens/manifest.json (`Manifest`); True when it differs from the one there before (False: a
    rerun found nothing new)."""
    path = storage.join(token_dir(cfg), FILE)
    before = storage.read_text(path) if storage.exists(path) else None
    manifest = Manifest(name=cfg["corpus"]["name"], version=1, config=cfg["corpus"], stats=stats,
                        splits={split: [s for f in finished for s in f["splits"][split]] for split in SPLITS},
                        kept=[f["kept"] for f in finished], code_version=corpus_code_version(cfg))
    text = manifest.to_json()
    storage.write_text(path, text)
    return text != before


def corpus_code_version(cfg: dict[str, Any]) -> str:
    """The version of the code that makes a corpus: the shard stages and the steps `corpus.pipeline` names."""
    return code_version(sys.modules[shards.__name__], *targets(cfg["corpus"]["pipeline"]))


def page_shards(cfg: dict[str, Any], work: Path, sample: Sample | None) -> tuple[list[ShardPlan], list[ShardResult], list]:
    """Every shard of pages through the per-document steps: WARC files cut by bytes, or the dumps'
    URLs fetched as `corpus.fetch.mode` says (live; archive; live, then the archives for the URLs
    that gave no article text, as shards of their own). Returns the plan, each shard's result, and
    the results of the stages before (for their counters)."""
    c = cfg["corpus"]
    if c["source"] == "warc":
        plan = plan_warc_shards(c["warc_files"], c["shard_bytes"])
        return plan, run_shards(cfg, plan, []), []
    mode = c["fetch"]["mode"]
    live, fetches, urls = fetched_shards(cfg, work, sample and sample.proxy)
    processed = run_shards(cfg, live, fetches) if mode != "archive" else []
    plan = live if mode != "archive" else []
    if mode != "live":
        urls_of = {shard.id: shard.urls for shard in live}
        wanted = {shard.id: p["wanted"] for shard, p in zip(live, processed)} if processed else urls_of
        archived, archive_fetches = archived_shards(cfg, work, wanted, urls_of, sample and sample.endpoints)
        plan, fetches = plan + archived, fetches + archive_fetches
        processed += run_shards(cfg, archived, archive_fetches)
    return plan, processed, [urls, *(f.result() for f in fetches)]


@flow(name="build-corpus", log_prints=True)
def build_corpus(cfg: dict[str, Any]) -> dict[str, Any]:
    """Shards, the steps per shard, near-dup removal across shards, then tokens; returns the token
    folder and every counter. With `corpus.source=warc` the pages come from `corpus.warc_files`."""
    c = cfg["corpus"]
    serve = c["serve_sample_web"] and c["source"] == "fetch"
    with stopping_on_signal(), serve_sample() if serve else nullcontext() as sample:  # until every fetch has finished
        plan, processed, early = page_shards(cfg, Path(c["out_dir"]), sample)
    sources = earlier_sources(c["dedup"]["against"]) + [p["source"] for p in processed]
    finished = tokenize_shards(cfg, plan, sources, dedup_phases(cfg, sources, len(plan)))
    stats = merge_stats(*early, *processed, *finished)
    changed = write_manifest(cfg, finished, stats)
    return {"data_dir": token_dir(cfg), "stats": stats, "changed": changed}


def check_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` when every input the corpus asks for is there and usable, else a UserError in one line,
    before any task starts."""
    c = cfg["corpus"]
    if c["source"] == "fetch":
        if not storage.is_local(c["out_dir"]):
            raise UserError(f"corpus.out_dir={c['out_dir']}: a store URL needs corpus.source=warc (fetching "
                            "writes URL lists and pages to a local or shared folder)")
        for dump in map(Path, c["dumps"]):
            try:
                dump_format(dump)  # MissingInput when it is not there
            except BadDump:  # empty, or not a dump at all
                if not c["urls"]["skip_bad_dumps"]:
                    raise
    elif not c["warc_files"]:
        raise UserError("corpus.source=warc needs corpus.warc_files=[...]")
    for warc in c["warc_files"] if c["source"] == "warc" else []:
        if not storage.exists(warc):
            raise MissingInput(f"WARC file {warc} does not exist: check corpus.warc_files")
    for name, step in enabled_steps(c["pipeline"]).items():
        if "benchmarks_dir" in step:
            check_benchmarks(step["benchmarks_dir"], step["benchmarks"], f"corpus.pipeline.{name}.benchmarks_dir")
    return cfg


@forms.run_form
@flow(name="corpus", log_prints=True)
def corpus_flow(corpus: forms.Corpus = forms.pick("corpus"), source: forms.Source = None,
                fetch_mode: forms.FetchMode = None, dumps: forms.Dumps = None,
                warc_files: forms.WarcFiles = None, runner: forms.Runner = forms.pick("runner"),
                n_workers: forms.Workers = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Build the token corpus of `corpus`; returns its folder and funnel counts. The shards run on the
    task runner that `runner` picks (local threads or Dask workers)."""
    cfg = check_inputs(flow_config(corpus_flow.fn, locals()))
    with task_runner(cfg) as runner:
        result = build_corpus.with_options(task_runner=runner)(cfg)
    pipeline, out_dir = cfg["corpus"]["pipeline"], cfg["corpus"]["out_dir"]
    stats, sizes = result["stats"], storage.folder_sizes(out_dir)
    with storage.staged_folder(out_dir) as local:
        report = write_report(stats, sizes, local, pipeline)
        report["wandb"] = (log_to_wandb(stats, report, cfg["logger"], f"corpus-{cfg['corpus']['name']}", pipeline,
                                        result["data_dir"])
                           if result["changed"] else None)  # a cached rerun logs no new W&B run
    report.update({k: storage.join(out_dir, Path(v).name) for k, v in report.items() if k != "wandb"})
    markdown = funnel_markdown(stats, pipeline, sizes)
    if report["wandb"]:
        markdown += f"\n\nW&B run: `{report['wandb']}`\n"
    create_markdown_artifact(markdown, key="corpus-funnel", description="Corpus funnel")
    print(markdown)
    if not stats.get("tokenize/kept") and not cfg["corpus"]["dedup"]["against"]:  # a refresh may add nothing new
        raise UserError("the corpus is empty, no document came through: "
                        + " -> ".join(f"{label} {n}" for label, n in funnel(stats, pipeline)) + f" (see {out_dir})")
    return {**result, "report": report}


main = command(corpus_flow, check_inputs)


if __name__ == "__main__":
    main()
