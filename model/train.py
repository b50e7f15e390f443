"""Lightning wiring for GPT-2 training: trainer, strategy (DDP, DeepSpeed), W&B logger, callbacks, fit.

Free of Prefect, so that GPU benchmarks can import it on a machine that has only the training stack.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from model.callbacks import NonFiniteGuard, SampleTable, SaveOnSignal, StepProgress, Throughput
from model.data import TokenDataModule
from model.gpt import GPT
from model.lineage import record_checkpoint, record_corpus
from model.lit import GPTLightning
from model.manifest import Manifest


def accumulation(cfg: dict[str, Any]) -> int:
    """Micro-batches per optimizer step that reach `data.global_batch_tokens` (when it is not set:
    `trainer.accumulate_grad_batches`)."""
    tr, data = cfg["trainer"], cfg["data"]
    if not data["global_batch_tokens"]:
        return tr["accumulate_grad_batches"]
    devices = tr["devices"] if isinstance(tr["devices"], int) and tr["devices"] > 0 else 1
    per_micro_batch = data["batch_size"] * cfg["model"]["block_size"] * devices * tr["num_nodes"]
    return max(1, round(data["global_batch_tokens"] / per_micro_batch))


def make_logger(cfg: dict[str, Any]) -> WandbLogger | bool:
    """A W&B logger (offline unless configured online), or False when logging is off."""
    log_cfg = cfg["logger"]
    if not log_cfg["enabled"]:
        return False
    Path(log_cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=log_cfg["project"], name=cfg["run_name"], group=cfg["model"]["name"],
                       save_dir=log_cfg["save_dir"], mode=log_cfg["mode"], log_model=False, config=cfg)


def make_trainer(cfg: dict[str, Any], ckpt_dir: Path, logger, callbacks: list[pl.Callback]) -> pl.Trainer:
    """`cfg.trainer` instantiated as it is, with the accumulation, logger and callbacks of this run."""
    cb, accumulate = cfg["callbacks"], accumulation(cfg)
    tokens_per_step = cfg["data"]["batch_size"] * cfg["model"]["block_size"] * accumulate
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=cb["checkpoint_every_n_steps"]),
                 StepProgress(tokens_per_step), Throughput(tokens_per_step, cb["peak_flops"]),
                 NonFiniteGuard(ckpt_dir / "nonfinite-skipped.ckpt"),
                 SaveOnSignal(ckpt_dir / "last.ckpt"), SampleTable(cb["sample_every_n_steps"], [cfg["prompt"]]),
                 *callbacks]
    return instantiate(cfg["trainer"], accumulate_grad_batches=accumulate, logger=logger, callbacks=callbacks,
                       _convert_="all")


def fit(cfg: dict[str, Any], data_dir: str, ckpt_dir: str, callbacks: list[pl.Callback] = (),
        init_from: str | None = None) -> dict[str, Any]:
    """Train on `data_dir`'s shards, resuming from `ckpt_dir`/last.ckpt when it exists and
    `fit.resume` is on, else starting from the weights of the transformers folder `init_from`
    when given; returns the last checkpoint and the final metrics. A run stopped by SIGTERM or SIGINT
    saves last.ckpt and returns with `interrupted` naming the signal (else None)."""
    pl.seed_everything(cfg["seed"], workers=True)
    tr, run = cfg["trainer"], cfg["fit"]
    last = Path(ckpt_dir) / "last.ckpt"
    module = GPTLightning(cfg["model"], cfg["optim"], tr["max_steps"], run["activation_checkpointing"], run["compile"])
    d = cfg["data"]
    data = TokenDataModule(data_dir, cfg["model"]["block_size"], d["batch_size"], cfg["seed"], d["num_workers"],
                           d["sampling"], d["shuffle_buffer"], d["cache_dir"], d["cache_gb"])
    module.corpus = Manifest.read(data_dir).identity()  # recorded in every checkpoint
    logger = make_logger(cfg)
    if logger:
        record_corpus(logger.experiment, data_dir)
    trainer = make_trainer(cfg, Path(ckpt_dir), logger, list(callbacks))
    resume = run["resume"] and last.exists()
    if init_from and not resume:  # a run's own checkpoint wins over its starting point
        module.model.copy_weights_from(GPT.from_hf(init_from))
    print(f"train: {cfg['model']['name']} ({module.model.num_params() / 1e6:.1f}M parameters) on "
          f"{Manifest.read(data_dir).tokens('train'):,} tokens from {data_dir}, {tr['max_steps']} steps, "
          f"{'resuming from ' + str(last) if resume else 'from ' + (init_from or 'scratch')}", flush=True)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    stopped_by = next(c.received for c in trainer.callbacks if isinstance(c, SaveOnSignal))
    result = {"checkpoint": str(last), "metrics": metrics, "seconds": time.perf_counter() - start,
              "global_step": trainer.global_step, "max_steps": tr["max_steps"], "interrupted": stopped_by,
              "wandb_dir": logger.experiment.dir if logger else None,
              "wandb_run": logger.experiment.path if logger else None}
    if logger:
        if cfg["logger"]["log_model"]:
            record_checkpoint(logger.experiment, last, cfg["run_name"])
        logger.experiment.finish()
    return result
