"""Incremental corpus refresh: process only the dump months not seen before, fetch only unseen URLs,
dedup against everything already kept, and publish a new corpus version beside the old ones.

Layout under `corpus.out_dir`: versions/vNNNN/ holds each refresh's stages and shards;
tokens/manifest.json is the latest version (all shards so far) and tokens/manifest-vNNNN.json
every earlier one, so a run trained on an older version stays reproducible.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import forms
from flows.common import command, flow_config, given, token_dir
from flows.corpus import corpus_code_version, corpus_flow
from model.manifest import FILE, Manifest
from tasks.corpus.dumps import download_dumps_task
from tasks.errors import MissingInput

DUMP_SUFFIXES = (".zst", ".xz", ".bz2", ".ndjson", ".jsonl")


def new_dumps(dumps_dir: Path, pattern: str, processed: list[str]) -> list[Path]:
    """Dump files in `dumps_dir` matching `pattern` that no earlier refresh processed, oldest first."""
    return sorted(p for p in dumps_dir.glob(pattern) if p.suffix in DUMP_SUFFIXES and p.name not in processed)


def version_config(cfg: dict[str, Any], dumps: list[Path], version: int) -> dict[str, Any]:
    """The corpus config of one refresh: its own folder, the shared seen-URL store, and near-dup
    removal against the kept documents of every earlier version."""
    vcfg = copy.deepcopy(cfg)
    c = vcfg["corpus"]
    c["dumps"] = [str(p) for p in dumps]
    c["out_dir"] = str(Path(cfg["corpus"]["out_dir"]) / "versions" / f"v{version:04d}")
    c["name"] = f"{cfg['corpus']['name']}-v{version:04d}"
    c["dedup"]["against"] = [str(Path(cfg["corpus"]["out_dir"]) / "versions" / f"v{v:04d}" / "tokens" / FILE)
                             for v in range(1, version)]
    # seen_urls_dir was resolved against the corpus root before out_dir changed, so every version shares it
    return vcfg


def publish(cfg: dict[str, Any], versions: list[int]) -> None:
    """tokens/manifest.json: the files of every version in one manifest (`Manifest.merged`), carrying
    the settings and code version a first build's does; the one it replaces kept as manifest-vNNNN.json."""
    root, tokens = Path(cfg["corpus"]["out_dir"]), Path(token_dir(cfg))
    tokens.mkdir(parents=True, exist_ok=True)
    current = tokens / FILE
    if current.exists():
        current.rename(tokens / f"manifest-v{Manifest.from_json(current.read_text()).version:04d}.json")
    parts = [(f"../versions/v{v:04d}/tokens", Manifest.read(str(root / "versions" / f"v{v:04d}" / "tokens")))
             for v in versions]
    merged = Manifest.merged(parts, cfg["corpus"]["name"], versions[-1], cfg["corpus"], corpus_code_version(cfg))
    current.write_text(merged.to_json())


def check_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg`, unless there is no dumps folder to look in and no dump to download into it (MissingInput)."""
    refresh = cfg["corpus"]["refresh"]
    if not refresh["dump_urls"] and not Path(refresh["dumps_dir"]).is_dir():
        raise MissingInput(f"corpus.refresh.dumps_dir={refresh['dumps_dir']} does not exist: put the dump months "
                           f"({refresh['pattern']}) there, or list corpus.refresh.dump_urls to download them")
    return cfg


@forms.run_form
@flow(name="corpus-refresh", log_prints=True)
def refresh_flow(corpus: forms.Corpus = forms.pick("corpus"), dumps_dir: forms.DumpsDir = None,
                 fetch_mode: forms.FetchMode = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Add the new dump months in `corpus.refresh.dumps_dir` (after downloading those of
    `corpus.refresh.dump_urls` it lacks) to the corpus as a new version."""
    cfg = check_inputs(flow_config(refresh_flow.fn, locals()))
    root = Path(cfg["corpus"]["out_dir"])
    state_file = root / "refresh.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"processed": [], "versions": []}
    refresh = cfg["corpus"]["refresh"]
    if refresh["dump_urls"]:
        downloads = download_dumps_task(refresh["dump_urls"], refresh["dumps_dir"], state["processed"],
                                        cfg["corpus"]["fetch"])
        print(f"dump downloads: {downloads}")
    dumps = new_dumps(Path(refresh["dumps_dir"]), refresh["pattern"], state["processed"])
    if not dumps:
        get_run_logger().info("no new dumps in %s: nothing to do", refresh["dumps_dir"])
        return {"new_dumps": [], "version": state["versions"][-1] if state["versions"] else None}
    version = (state["versions"][-1] if state["versions"] else 0) + 1
    with given(version_config(cfg, dumps, version)):
        result = corpus_flow()
    publish(cfg, state["versions"] + [version])
    state = {"processed": state["processed"] + [p.name for p in dumps], "versions": state["versions"] + [version]}
    state_file.write_text(json.dumps(state, indent=2))
    return {"new_dumps": [p.name for p in dumps], "version": version, "stats": result["stats"]}


main = command(refresh_flow, check_inputs)


if __name__ == "__main__":
    main()
