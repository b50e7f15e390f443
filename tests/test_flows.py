"""The flows under a real (temporary) Prefect server, the W&B offline run read back, and the demo end to end."""
import json
import logging
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowRunFilter,
                                            FlowRunFilterId, FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId)

from flows.common import checkpoint_path, token_dir
from tests.conftest import run_flow
from flows.corpus import corpus_flow
from flows.evaluate import evaluate_flow
from flows.generate import generate_flow
from flows.train import train_flow
from model.data import TokenShards
from model.evaluate import perplexity
from model.gpt import GPT, GPTConfig
from model.checkpoint import load_gpt
from tasks.corpus.report import funnel
from tasks.lm.dashboard import panel_metrics, training_workspace

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def info_logs():
    """Prefect's INFO lines sent to the API, as a deployment's run sends them (the suite runs at WARNING)."""
    loggers = [logging.getLogger(name) for name in ("prefect", "prefect.task_runs", "prefect.flow_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline W&B run, read back from its .wandb file by W&B's own reader."""
    [log_file] = run_dir.glob("run-*.wandb")
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log_file)],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def wandb_history(run_dir: Path) -> list[dict]:
    """The metrics rows of an offline W&B run."""
    return [r["history"]["item"] for r in wandb_records(run_dir) if r.get("type") == "history"]


def task_states(flow_state) -> dict[str, str]:
    """Task name -> final state name for one flow run and its subflows, as the Prefect API reports them."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id, *(run.id for run in subflows)]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if not run.name.startswith("build-corpus")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo corpus built once by the corpus flow, and the config that built it."""
    from flows.common import load_config

    data = tmp_path_factory.mktemp("data")
    cfg = load_config([f"paths.data={data}", "trainer.max_steps=40", "trainer.val_check_interval=20",
                       "callbacks.checkpoint_every_n_steps=20", "callbacks.sample_every_n_steps=20",
                       "callbacks.peak_flops=1e12"])
    state = run_flow(corpus_flow, cfg, return_state=True)
    return cfg, state


def test_corpus_flow_funnel(demo):
    cfg, state = demo
    result = state.result()
    counts = dict(funnel(result["stats"], cfg["corpus"]["pipeline"]))
    # 83 dump lines -> 63 unique article URLs -> 57 live pages (six 404s), one a JavaScript shell with no
    # text -> 6 pages from the sample's web archive (one dead link is in neither archive) -> 4 foreign
    # pages, 5 syndicated copies, 3 briefs
    assert counts == {"records read": 83, "URLs kept": 63, "fetched": 57, "from web archives": 6, "extracted": 62,
                      "English": 58, "after dedup": 53, "≥ min tokens": 50, "tokens": counts["tokens"]}
    assert (result["stats"]["fetch/archive_commoncrawl"], result["stats"]["fetch/archive_wayback"],
            result["stats"]["archive/not_captured"]) == (4, 2, 1)
    assert counts["tokens"] > 10_000
    assert all(Path(p).exists() for p in result["report"].values())
    logged = {k: v for row in wandb_history(Path(result["report"]["wandb"])) for k, v in row.items()}
    assert logged["corpus/dedup/kept"] == 53 and logged["corpus/language/lang_de"] == 1


def test_corpus_from_warc_files(demo, tmp_path):
    """source=warc: the WARC the first run fetched, read as if Common Crawl had crawled it."""
    from flows.common import load_config

    cfg, state = demo
    warc = Path(cfg["corpus"]["out_dir"]) / "pages" / "00000" / "pages.warc.gz"
    warc_cfg = load_config([f"paths.data={tmp_path}", "corpus.source=warc", f"corpus.warc_files=[{warc}]",
                            "logger=none"])
    counts = dict(funnel(run_flow(corpus_flow, warc_cfg)["stats"], cfg["corpus"]["pipeline"]))
    assert counts["records read"] == counts["URLs kept"] == counts["fetched"] == 0
    assert (counts["extracted"], counts["after dedup"], counts["≥ min tokens"]) == (56, 47, 44)


def test_second_corpus_run_is_served_from_cache(demo):
    cfg, first = demo
    assert set(task_states(first).values()) <= {"Completed", "Cached"}
    second = run_flow(corpus_flow, cfg, return_state=True)
    states = task_states(second)
    assert set(states) == {"urls", "fetch", "shard", "archive-lookup", "archive-fetch", "dedup-candidates", "dedup-confirm",
                           "tokenize"}
    assert set(states.values()) == {"Cached"}
    assert second.result()["stats"] == first.result()["stats"]


def test_train_logs_to_wandb_offline_and_loss_falls(demo):
    cfg, corpus = demo
    with info_logs():
        state = run_flow(train_flow, cfg, return_state=True)
    result, run_id = state.result(), state.state_details.flow_run_id
    with get_client(sync_client=True) as client:  # what the Prefect UI shows of the run
        for _ in range(20):  # run logs reach the API in batches
            logs = [log.message for log in client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[run_id])))]
            if any(m.startswith("train step 40/40") for m in logs):
                break
            time.sleep(0.5)
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["training"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    steps = [m for m in logs if m.startswith("train step ")]
    assert any(m.startswith("train step 10/40: loss ") and "tokens/s, ETA" in m for m in steps), logs[-20:]
    assert steps[-1].startswith("train step 40/40")
    assert result["wandb_run"] and result["wandb_run"] in artifact.data and result["checkpoint"] in artifact.data
    configs = [json.dumps(r) for r in wandb_records(Path(result["wandb_dir"]).parent) if r.get("type") in ("run", "config")]
    assert any("manifest_sha256" in c and '"demo"' in c for c in configs)  # the run names the corpus it read
    artifacts = [r["artifact"] for r in wandb_records(Path(result["wandb_dir"]).parent) if r.get("type") == "artifact"]
    assert [a["type"] for a in artifacts if a["name"] == f"model-{cfg['run_name']}"] == ["model"]
    # the corpus as the run's input, the very version the corpus run logged: lineage after `wandb sync`
    [used] = [a for a in artifacts if a["name"] == "corpus-demo"]
    [logged] = [r["artifact"] for r in wandb_records(Path(corpus.result()["report"]["wandb"]))
                if r.get("type") == "artifact" and r["artifact"]["name"] == "corpus-demo"]
    assert used.get("use_after_commit") is True and used["digest"] == logged["digest"]
    rows = wandb_history(Path(result["wandb_dir"]).parent)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    perplexities = [r["val/perplexity"] for r in rows if "val/perplexity" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1.0
    assert len(perplexities) == 2 and perplexities[-1] < perplexities[0]
    assert Path(result["checkpoint"]).exists()
    logged = {k for row in rows for k in row}
    assert {"lr", "grad_norm", "perf/tokens_per_s", "perf/tokens_seen", "perf/mfu"} <= logged
    dashboard = training_workspace("offline-entity", cfg["logger"]["project"])  # built offline, saved by `make dashboard`
    assert panel_metrics(dashboard) <= logged and len(dashboard.sections) == 3
    assert [r["samples._type"] for r in rows if "samples._type" in r] == ["table-file"] * 2  # steps 20 and 40


def test_a_missing_checkpoint_is_named_with_the_way_out(tmp_path):
    cfg = {"paths": {"data": str(tmp_path)}, "run_name": "gpt2-demo", "checkpoint": None}
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*gpt2-demo/last.ckpt: train one with `make train`"):
        checkpoint_path(cfg)
    with pytest.raises(FileNotFoundError, match="pass checkpoint=PATH"):
        checkpoint_path({**cfg, "checkpoint": str(tmp_path / "typo.ckpt")})


def test_evaluate_and_generate_read_the_checkpoint(demo):
    cfg, _ = demo
    metrics = run_flow(evaluate_flow, cfg)["val"]
    checkpoint = Path(cfg["paths"]["data"]) / "checkpoints" / cfg["run_name"] / "last.ckpt"
    trained = load_gpt(str(checkpoint))
    untrained = GPT(GPTConfig.from_settings(cfg["model"])).eval()  # the same architecture, its initial weights
    val = torch.from_numpy(TokenShards(Path(token_dir(cfg)), "val")[: cfg["eval"]["max_tokens"]].astype("int64"))
    before = perplexity(untrained, val, cfg["eval"]["context"], cfg["eval"]["context"] // 2)
    assert metrics["eval/perplexity_strided"] < before / 10 and metrics["eval/tokens"] > 1000
    runs = lambda: len(list(Path(cfg["logger"]["save_dir"]).glob("wandb/offline-run-*")))  # noqa: E731
    before = runs()
    assert run_flow(evaluate_flow, cfg)["val"] == metrics and runs() == before  # a cached rerun: no new W&B run
    texts = run_flow(generate_flow, {**cfg, "max_new_tokens": 20, "num_samples": 2})
    assert len(texts) == 2 and texts[0] != texts[1]
    assert all(t.startswith(cfg["prompt"]) and len(t) > len(cfg["prompt"]) for t in texts)
    assert run_flow(generate_flow, {**cfg, "max_new_tokens": 20, "num_samples": 1}) == texts[:1]  # seeded
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[f"model.{k}"], v) for k, v in trained.state_dict().items())


def test_evaluate_runs_the_benchmarks_it_finds(demo, tmp_path):
    cfg, _ = demo
    (tmp_path / "wiki.test.raw").write_text(" = Recycling = \n The council said that plastic bottles were sorted . \n")
    (tmp_path / "lambada.jsonl").write_text(json.dumps({"text": "The budget for food waste rose to five million"}))
    eval_cfg = {**cfg["eval"], "benchmarks_dir": str(tmp_path),
                "benchmarks": {"wikitext2": "wiki.test.raw", "lambada": "lambada.jsonl", "ptb": "missing.txt"}}
    result = run_flow(evaluate_flow, {**cfg, "eval": eval_cfg, "refresh": True})
    assert set(result["benchmarks"]) == {"wikitext2", "lambada"}  # ptb's file is absent: skipped
    assert result["benchmarks"]["wikitext2"]["perplexity"] > 1
    assert 0 <= result["benchmarks"]["lambada"]["accuracy"] <= 100
    assert set(result["contamination"]) == {"wikitext2", "lambada"}


def test_decontamination_drops_documents_that_overlap_an_eval_set(demo, tmp_path):
    from flows.common import load_config
    from tasks.corpus.document import corpus_documents

    cfg, _ = demo
    docs = list(corpus_documents(Path(cfg["corpus"]["out_dir"]) / "tokens"))
    (tmp_path / "bench").mkdir()
    # an eval set that leaked into training: a story with a syndicated copy
    leaked = next(d for d in docs if d.url.rsplit("/", 1)[1] in {"recycling-00", "transit-01", "astronomy-02"})
    (tmp_path / "bench" / "wiki.test.raw").write_text(leaked.text)
    # the sample's stories share template phrases, so only a document mostly made of eval 8-grams goes
    clean_cfg = load_config([f"paths.data={tmp_path}", "corpus.pipeline.decontaminate.enabled=true", "logger=none",
                             "corpus.pipeline.decontaminate.max_overlap=0.5", f"eval.benchmarks_dir={tmp_path / 'bench'}"])
    clean_cfg["corpus"]["pipeline"]["decontaminate"]["benchmarks"] = {"wikitext2": "wiki.test.raw"}
    result = run_flow(corpus_flow, clean_cfg)
    # it runs before dedup, so the leaked story's syndicated copy goes with it
    assert result["stats"]["decontaminate/overlaps_eval"] == 2 and result["stats"]["tokenize/kept"] == len(docs) - 1
    kept = {d.id for d in corpus_documents(Path(result["data_dir"]))}
    assert leaked.id not in kept


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """What `make demo` runs, with a shorter training, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "flows.pipeline", f"paths.data={tmp_path}", "trainer.max_steps=30",
                           "trainer.val_check_interval=30"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Corpus funnel:" in out and "after dedup" in out
    [perplexity_line] = re.findall(r"Val perplexity: ([\d.]+) \(over ([\d,]+) tokens\)", out)
    assert 1 < float(perplexity_line[0]) < 1000 and int(perplexity_line[1].replace(",", "")) > 1000  # finite
    prompt = "Recycling is good for the world. NO! YOU COULD NOT BE MORE WRONG!!"
    sample = out.split("Sample:\n", 1)[1].split("=" * 72)[0]
    assert sample.startswith(prompt) and len(sample.strip()) > len(prompt) + 10  # the prompt, then generated text
    assert (tmp_path / "checkpoints" / "gpt2-tiny-demo" / "last.ckpt").exists()


def test_the_corpus_run_logs_its_version_as_an_artifact_and_a_cached_rerun_logs_nothing(demo):
    cfg, state = demo
    run_dir = Path(state.result()["report"]["wandb"])
    artifacts = [r["artifact"] for r in wandb_records(run_dir) if r.get("type") == "artifact"]
    assert [a["type"] for a in artifacts if a["name"] == "corpus-demo"] == ["dataset"]  # beside the funnel table's
    runs = lambda: sorted(Path(cfg["logger"]["save_dir"]).glob("wandb/offline-run-*"))  # noqa: E731
    before = runs()
    again = run_flow(corpus_flow, cfg)
    assert again["report"]["wandb"] is None and runs() == before
