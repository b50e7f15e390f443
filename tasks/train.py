"""Training stage: fit GPT-2 with Lightning on the corpus token shards, tracked in W&B."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from prefect import task
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from model.data import TokenDataModule
from model.lit import GPTLightning
from tasks.caching import FilesAndCode


def make_logger(cfg: dict[str, Any], run_name: str) -> WandbLogger | bool:
    """A W&B logger (offline unless configured online), or False when logging is off."""
    log_cfg = cfg["logger"]
    if not log_cfg["enabled"]:
        return False
    Path(log_cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=log_cfg["project"], name=run_name, save_dir=log_cfg["save_dir"],
                       mode=log_cfg["mode"], config=cfg)


def make_trainer(cfg: dict[str, Any], ckpt_dir: Path, logger: WandbLogger | bool) -> pl.Trainer:
    tr = cfg["trainer"]
    strategy = hydra.utils.instantiate(tr["strategy"]) if isinstance(tr["strategy"], dict) else tr["strategy"]
    checkpoints = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                  every_n_train_steps=tr["checkpoint_every_n_steps"])
    return pl.Trainer(accelerator=tr["accelerator"], devices=tr["devices"], num_nodes=tr["num_nodes"],
                      strategy=strategy, precision=tr["precision"], max_steps=tr["max_steps"],
                      accumulate_grad_batches=tr["accumulate_grad_batches"],
                      gradient_clip_val=tr["gradient_clip_val"], val_check_interval=tr["val_check_interval"],
                      check_val_every_n_epoch=None, limit_val_batches=tr["limit_val_batches"],
                      log_every_n_steps=tr["log_every_n_steps"], logger=logger, callbacks=[checkpoints],
                      enable_model_summary=False)


def fit(cfg: dict[str, Any], data_dir: str, ckpt_dir: str) -> dict[str, Any]:
    """Train from scratch on `data_dir`'s shards; returns the last checkpoint and final metrics."""
    pl.seed_everything(cfg["seed"], workers=True)
    tr = cfg["trainer"]
    module = GPTLightning(cfg["model"], cfg["optim"], tr["max_steps"])
    data = TokenDataModule(data_dir, cfg["model"]["block_size"], tr["batch_size"], cfg["seed"], tr["num_workers"])
    logger = make_logger(cfg, cfg["run_name"])
    trainer = make_trainer(cfg, Path(ckpt_dir), logger)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    tokens = tr["max_steps"] * tr["batch_size"] * tr["accumulate_grad_batches"] * cfg["model"]["block_size"]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = {"checkpoint": str(Path(ckpt_dir) / "last.ckpt"), "metrics": metrics,
              "perf/tokens_per_s": tokens / seconds, "seconds": seconds,
              "wandb_dir": logger.experiment.dir if logger else None}
    if logger:
        logger.experiment.summary["perf/tokens_per_s"] = result["perf/tokens_per_s"]
        logger.experiment.finish()
    return result


@task(name="train", cache_policy=FilesAndCode(files=("data_dir",)))
def train_task(cfg: dict[str, Any], data_dir: str, out: str) -> dict[str, Any]:
    """Fit on the corpus in `data_dir`, writing checkpoints to `out`."""
    return fit(cfg, data_dir, out)
