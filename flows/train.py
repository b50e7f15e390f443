"""Training flow: fit GPT-2 on the corpus token shards (building the demo corpus first if it is missing)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import forms
from flows.common import cached, command, flow_config, given, run_dir, token_dir
from flows.corpus import corpus_flow
from model.manifest import FILE, Manifest
from tasks import storage
from tasks.errors import UserError
from tasks.lm.train import train_task

TRAIN_SETTINGS = ("model", "optim", "trainer", "data", "callbacks", "fit", "logger", "seed", "run_name", "prompt")


def corpus_dir(cfg: dict[str, Any]) -> str:
    """The token shards for `cfg.corpus`, running the corpus flow when they do not exist yet."""
    tokens = token_dir(cfg)
    if storage.exists(storage.join(tokens, FILE)):
        return tokens  # a store URL is streamed through a local cache (data.cache_dir)
    if not storage.is_local(tokens):
        raise UserError(f"corpus.out_dir={cfg['corpus']['out_dir']}: no corpus at {tokens} ({FILE} missing): "
                        "build it there first (make corpus)")
    with given(cfg):
        return corpus_flow()["data_dir"]


def check_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` when the trainer can run here and the corpus (when built) holds a block to train on,
    else a UserError in one line."""
    import torch

    if cfg["trainer"]["accelerator"] in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={cfg['trainer']['accelerator']} needs a CUDA GPU and this machine "
                        "has none: use trainer=cpu")
    check_trainer(cfg["trainer"])
    if cfg["init_from"]:
        check_init_from(Path(cfg["init_from"]), cfg["model"])
    tokens_dir = token_dir(cfg)
    if storage.exists(storage.join(tokens_dir, FILE)):
        check_corpus_size(Manifest.read(tokens_dir), tokens_dir, cfg)
    return cfg


def check_corpus_size(manifest: Manifest, tokens_dir: str, cfg: dict[str, Any]) -> None:
    """UserError when the train split holds no block, or (shuffled epochs) not one batch for every rank."""
    tokens, block, tr = manifest.tokens("train"), cfg["model"]["block_size"], cfg["trainer"]
    if tokens <= block:
        raise UserError(f"the corpus at {tokens_dir} has {tokens:,} train tokens, not one block of "
                        f"model.block_size={block} + 1: build a bigger corpus")
    ranks = (tr["devices"] if isinstance(tr["devices"], int) and tr["devices"] > 0 else 1) * tr["num_nodes"]
    windows = sum((s["tokens"] - 1) // block for s in manifest.splits["train"])
    if cfg["data"]["sampling"] == "shuffle" and windows < cfg["data"]["batch_size"] * ranks:
        raise UserError(f"the corpus at {tokens_dir} has {windows:,} windows of model.block_size={block}, fewer than "
                        f"a batch of data.batch_size={cfg['data']['batch_size']} on each of {ranks} ranks: build a "
                        "bigger corpus, or use data.sampling=random")


def check_trainer(trainer: dict[str, Any]) -> None:
    """UserError naming the keys of `trainer` that its `_target_` class does not take."""
    import inspect

    from hydra.utils import get_class

    taken = inspect.signature(get_class(trainer["_target_"])).parameters
    unknown = sorted(set(trainer) - set(taken) - {"_target_"})
    if unknown:
        raise UserError(f"trainer.{unknown[0]}: not an argument of {trainer['_target_']} "
                        f"({', '.join(unknown)} unknown; see its documentation)")


def check_init_from(folder: Path, model: dict[str, Any]) -> None:
    """UserError unless `folder` is a transformers GPT-2 folder of the architecture `model` names."""
    from model.checkpoint import NotACheckpoint, checkpoint_kind

    try:
        kind = checkpoint_kind(folder) if folder.exists() else None
    except NotACheckpoint:
        kind = None
    if kind != "transformers":
        raise UserError(f"init_from={folder} is not a transformers GPT-2 folder (config.json + weights)")
    theirs = json.loads((folder / "config.json").read_text())
    wanted = {"n_layer": model["n_layer"], "n_head": model["n_head"], "n_embd": model["n_embd"],
              "n_positions": model["block_size"]}
    differ = [f"{k} {theirs.get(k)} there, {v} in model={model['name']}" for k, v in wanted.items() if theirs.get(k) != v]
    if differ:
        raise UserError(f"init_from={folder} is another architecture ({'; '.join(differ)}): pick the model= that matches it")


@forms.run_form
@flow(name="train", log_prints=True)
def train_flow(model: forms.Model = forms.pick("model"), trainer: forms.Trainer = forms.pick("trainer"),
               max_steps: forms.MaxSteps = None, corpus: forms.Corpus = forms.pick("corpus"),
               init_from: forms.InitFrom = None, run_name: forms.RunName = None,
               overrides: list[str] = ()) -> dict[str, Any]:
    """Train GPT-2 on the corpus (built first when missing); returns the last checkpoint and the final metrics."""
    cfg = check_inputs(flow_config(train_flow.fn, locals()))
    train_settings = {k: cfg[k] for k in TRAIN_SETTINGS}
    result = cached(train_task, cfg)(train_settings, corpus_dir(cfg), str(run_dir(cfg)), cfg["init_from"])
    print(f"checkpoint: {result['checkpoint']}  metrics: {result['metrics']}")
    create_markdown_artifact(training_markdown(result, cfg), key="training", description="Training run")
    return result


def training_markdown(result: dict[str, Any], cfg: dict[str, Any]) -> str:
    """Where the run's checkpoint and W&B run are, and how it ended."""
    metrics = result["metrics"]
    rows = [("model", cfg["model"]["name"]), ("checkpoint", f"`{result['checkpoint']}`"),
            ("W&B run", f"`{result['wandb_run']}` (files: `{result['wandb_dir']}`)" if result["wandb_run"] else "off"),
            ("steps", str(result["global_step"])), ("seconds", f"{result['seconds']:,.0f}")]
    rows += [(name, f"{value:.4g}") for name, value in sorted(metrics.items())]
    return "| training run | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


main = command(train_flow, check_inputs)


if __name__ == "__main__":
    main()
