"""The corpus's Prefect tasks: thin wrappers that key, cache, retry and name each unit of work and
hand the work itself, a plain function of the step modules, to `on_cluster` (a Dask worker under
`runner=dask`, else the calling thread). A shard's task also reuses the shard's done marker."""
from __future__ import annotations

from typing import Any

from prefect import task

from tasks import storage
from tasks.caching import FilesAndCode, once
from tasks.cluster import on_cluster
from tasks.corpus.archive import fetch_archived, lookup, with_endpoints
from tasks.corpus.fetch import fetch_to_warc
from tasks.corpus.neardup import Source, bands_pairs, confirm_slices
from tasks.corpus.shards import ShardPlan, ShardResult, finish_shard, process_shard
from tasks.corpus.urls import write_url_shards


@task(name="urls", cache_policy=FilesAndCode(files=("dumps",), code=write_url_shards))
def urls_task(dumps: list[str], out_dir: str, cfg: dict[str, Any], shard_docs: int,
              seen_dir: str | None = None) -> dict[str, Any]:
    """Read the dumps and write the kept URLs as documents, in shards of `shard_docs`, under `out_dir`;
    `seen_dir` holds the URLs taken by earlier runs."""
    return on_cluster(write_url_shards, dumps, out_dir, cfg, shard_docs, seen_dir)


@task(name="fetch", cache_policy=FilesAndCode(files=("urls_path",), exclude=("proxy",), code=fetch_to_warc))
def fetch_task(urls_path: str, out: str, cfg: dict[str, Any], proxy: str | None = None) -> dict[str, Any]:
    """Fetch every URL in `urls_path` into `out`/pages.warc.gz, resuming an interrupted run.

    `proxy`, when given, overrides `cfg.proxy` and is left out of the cache key.
    """
    return on_cluster(fetch_to_warc, urls_path, out, {**cfg, "proxy": proxy or cfg.get("proxy")})


@task(name="archive-lookup", cache_policy=FilesAndCode(files=("wanted",), exclude=("endpoints",), code=lookup))
def archive_lookup_task(wanted: dict[str, str], out_dir: str, archive: dict[str, Any],
                        endpoints: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Common Crawl's nearest capture of every wanted URL ({shard: wanted file}) in bulk, each pass a
    map over the cluster: {shard: captures file}. `endpoints` (the sample's archive) is not keyed."""
    return lookup(wanted, out_dir, with_endpoints(archive, endpoints))


@task(name="archive-fetch", cache_policy=FilesAndCode(files=("wanted", "captures"), exclude=("endpoints",),
                                                      code=fetch_archived))
def archive_fetch_task(wanted: str, captures: str, out: str, cfg: dict[str, Any],
                       endpoints: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The archived page of every URL in `wanted` into `out`/pages.warc.gz, resuming an interrupted run."""
    return on_cluster(fetch_archived, wanted, captures, out, {**cfg, "archive": with_endpoints(cfg["archive"], endpoints)})


@task(name="shard", cache_policy=FilesAndCode(files=("shard", "pipeline"), exclude=("force",), code=process_shard))
def shard_task(shard: ShardPlan, out_dir: str, pipeline: dict[str, dict[str, Any]], dedup: dict[str, Any],
               max_error_share: float, force: bool = False) -> ShardResult:
    """The per-document steps over one shard, reusing its done marker unless `force`; StepFailed
    (and no marker) when a step raised on more than `max_error_share` of its documents."""
    return once(storage.join(out_dir, "done.json"), {"shard": shard, "pipeline": pipeline, "dedup": dedup},
                ("shard", "pipeline"), process_shard, force,
                lambda: on_cluster(process_shard, shard, out_dir, pipeline, dedup, max_error_share), ShardResult)


@task(name="dedup-candidates", cache_policy=FilesAndCode(files=("sources",), code=bands_pairs))
def candidates_task(sources: list[Source], bands: list[int], out_dir: str, max_bucket: int,
                    chunk_docs: int) -> list[dict[str, Any]]:
    """Candidate pairs (earlier, later) of some LSH bands, one after another, in global document
    numbers, each written to its band's pair file grouped by the later document's shard; returns
    each band's path and each shard's row bounds."""
    return on_cluster(bands_pairs, sources, bands, out_dir, max_bucket, chunk_docs)


@task(name="dedup-confirm", cache_policy=FilesAndCode(files=("slices",), code=confirm_slices))
def confirm_task(slices: list[tuple[str, int, int]], sources: list[Source], threshold: float,
                 ngram: int) -> list[list[int]]:
    """The candidate pairs in one shard's slices of the pair files whose exact Jaccard is above the
    threshold. Keyed by the pair files: they are rewritten whenever any shard changes."""
    return on_cluster(confirm_slices, slices, sources, threshold, ngram)


@task(name="tokenize", cache_policy=FilesAndCode(files=("source",), exclude=("force",), code=finish_shard))
def finish_task(source: Source, drop: list[int], tokens_dir: str, shard_id: str,
                tokenize: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Filter one shard's near-duplicates and tokenize it, reusing its done marker unless `force`."""
    return once(storage.join(tokens_dir, f"done-{shard_id}.json"), {"source": source, "drop": drop, "tokenize": tokenize},
                ("source",), finish_shard, force,
                lambda: on_cluster(finish_shard, source, drop, tokens_dir, shard_id, tokenize))
