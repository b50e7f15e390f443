"""Incremental refresh: new months only, no URL fetched twice, dedup against the whole corpus, versions kept."""
import datetime as dt
import json
from pathlib import Path

import pytest
import zstandard

from flows.common import load_config
from tests.conftest import run_flow
from flows.refresh import refresh_flow
from model.data import TokenShards
from model.manifest import Manifest
from model.train import fit
from sample.archive import Capture, write_archive
from sample.build import DUMP
from sample.web import WEB_ROOT, archive_endpoints, make_archive_handler, page_file, serving
from tasks.corpus.document import corpus_documents
from tasks.corpus.fetch import FetchFailed
from tasks.lm.export import export_hf
from tests.test_flows import wandb_records


def write_month(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))


def train_two_steps(data: Path, tokens: Path) -> tuple[str, dict]:
    """A gpt2-tiny run of two steps on `tokens`, logged to W&B offline: its checkpoint, and the
    corpus its W&B run recorded."""
    cfg = load_config([f"paths.data={data}", "model=gpt2-tiny", "model.block_size=32", "data.batch_size=4",
                       "trainer.max_steps=2", "trainer.val_check_interval=1000", "trainer.limit_val_batches=0"])
    checkpoint = fit(cfg, str(tokens), str(data / "ckpt"))["checkpoint"]
    [run] = (data / "wandb" / "wandb").glob("offline-run-*")
    [corpus] = [r["config"]["update"]["corpus"] for r in wandb_records(run)
                if r.get("type") == "config" and "corpus" in r["config"]["update"]]
    return checkpoint, corpus


def test_refresh_adds_only_new_months_as_new_versions(tmp_path):
    lines = zstandard.ZstdDecompressor().decompress(DUMP.read_bytes(), max_output_size=10**8).decode().splitlines()
    dumps = tmp_path / "dumps"
    cfg = load_config([f"paths.data={tmp_path}", "logger=none"])
    write_month(dumps, "RS_2019-01.zst", lines[:40])

    first = run_flow(refresh_flow, cfg)
    assert first["new_dumps"] == ["RS_2019-01.zst"] and first["version"] == 1
    tokens = tmp_path / "corpus" / "demo" / "tokens"
    v1_train = len(TokenShards(tokens, "train"))
    v1 = Manifest.read(str(tokens))  # a refreshed corpus carries what a first build's manifest does
    assert (v1.name, v1.version, v1.config["name"], v1.eot) == ("demo", 1, "demo", 50256) and v1.code_version
    checkpoint, recorded = train_two_steps(tmp_path, tokens)  # training on it records its lineage
    assert recorded == v1.identity() and recorded["documents"] > 0

    # February repeats four of January's links and brings the rest
    write_month(dumps, "RS_2019-02.zst", lines[36:])
    second = run_flow(refresh_flow, cfg)
    assert second["new_dumps"] == ["RS_2019-02.zst"] and second["version"] == 2
    assert second["stats"]["urls/dropped_seen_before"] >= 1
    fetched = first["stats"]["fetch/ok"] + second["stats"]["fetch/ok"]
    assert fetched == 57  # every page of the sample web exactly once over both months
    # near-dup removal across versions: the same documents survive as in one run over both months
    assert first["stats"]["dedup/kept"] + second["stats"]["dedup/kept"] == 53

    assert len(TokenShards(tokens, "train")) > v1_train
    old = json.loads((tokens / "manifest-v0001.json").read_text())
    assert all((tokens / s["bin"]).exists() for s in old["splits"]["train"])  # version 1 stays readable
    assert Manifest.read(str(tokens)).version == 2
    # version 2 now lies in corpus.out_dir: the card still names the version the model was trained on
    card = (Path(export_hf(checkpoint, str(tmp_path / "hf"))) / "README.md").read_text()
    assert f"| corpus | demo, version 1, {v1.tokens('train'):,} train tokens (manifest sha256 {v1.sha256[:12]}) |" in card

    third = run_flow(refresh_flow, cfg)
    assert third == {"new_dumps": [], "version": 2}  # nothing new: no work


def test_a_refresh_in_archive_mode_dedups_archived_pages_against_earlier_versions(tmp_path):
    lines = zstandard.ZstdDecompressor().decompress(DUMP.read_bytes(), max_output_size=10**8).decode().splitlines()
    dumps = tmp_path / "dumps"
    write_month(dumps, "RS_2019-01.zst", lines[:30])
    first = run_flow(refresh_flow, load_config([f"paths.data={tmp_path}", "logger=none"]))
    kept = [d for d in corpus_documents(tmp_path / "corpus" / "demo" / "tokens") if d.origin == "live"][:4]
    # February links to a mirror of four of January's stories; the mirror is gone, its pages archived
    posted = dt.datetime(2019, 2, 11, tzinfo=dt.timezone.utc)
    mirrored = {f"http://mirror.example/story-{i}": page_file(WEB_ROOT, d.url).read_text() for i, d in enumerate(kept)}
    write_archive(tmp_path / "web-archive", [Capture(url, posted + dt.timedelta(days=3), html)
                                             for url, html in mirrored.items()])
    write_month(dumps, "RS_2019-02.zst", [json.dumps(
        {"id": f"m{i}", "url": url, "title": "Mirrored", "score": 50, "over_18": False, "is_self": False,
         "subreddit": "news", "created_utc": int(posted.timestamp())}) for i, url in enumerate(mirrored)])
    with serving(make_archive_handler(tmp_path / "web-archive")) as base:
        cc = archive_endpoints(base)["commoncrawl"]
        second = run_flow(refresh_flow, load_config([
            f"paths.data={tmp_path}", "logger=none", "corpus.fetch.mode=archive", "corpus.serve_sample_web=false",
            f"corpus.fetch.archive.commoncrawl.base='{cc['base']}'",
            f"corpus.fetch.archive.commoncrawl.collinfo='{cc['collinfo']}'", "corpus.fetch.archive.wayback.enabled=false"]))
    assert first["version"] == 1 and second["version"] == 2
    assert second["stats"]["fetch/archive_commoncrawl"] == 4 and "fetch/ok" not in second["stats"]
    assert second["stats"]["dedup/dropped"] == 4 and not second["stats"].get("dedup/kept")  # all copies of version 1


def test_a_month_whose_fetch_failed_is_not_marked_done_and_is_retried(tmp_path):
    lines = zstandard.ZstdDecompressor().decompress(DUMP.read_bytes(), max_output_size=10**8).decode().splitlines()
    write_month(tmp_path / "dumps", "RS_2019-01.zst", lines[:20])
    offline = load_config([f"paths.data={tmp_path}", "logger=none", "corpus.serve_sample_web=false",
                           "corpus.fetch.retries=0", "corpus.fetch.task_retries=0"])  # no sample web: every host fails to resolve, as with DNS down
    with pytest.raises(FetchFailed, match="failed on the network"):
        run_flow(refresh_flow, offline)
    assert not (tmp_path / "corpus" / "demo" / "refresh.json").exists()  # the month is not marked done
    online = run_flow(refresh_flow, load_config([f"paths.data={tmp_path}", "logger=none"]))
    assert online["new_dumps"] == ["RS_2019-01.zst"] and online["stats"]["fetch/ok"] > 0
