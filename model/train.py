"""Lightning wiring for GPT-2 training: trainer, strategy (DDP, DeepSpeed), W&B logger, callbacks, fit.

Free of Prefect, so that GPU benchmarks can import it on a machine that has only the training stack.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from model.callbacks import NonFiniteGuard, SampleTable, SaveOnSignal, StepProgress, Throughput
from model.data import TokenDataModule, TokenShards
from model.gpt import GPT
from model.lineage import record_checkpoint, record_corpus
from model.lit import GPTLightning
from model.manifest import Manifest


def accumulation(tr: dict[str, Any], block_size: int) -> int:
    """Micro-batches per optimizer step that reach `global_batch_tokens` (1 when it is not set)."""
    if not tr["global_batch_tokens"]:
        return tr["accumulate_grad_batches"]
    devices = tr["devices"] if isinstance(tr["devices"], int) and tr["devices"] > 0 else 1
    per_micro_batch = tr["batch_size"] * block_size * devices * tr["num_nodes"]
    return max(1, round(tr["global_batch_tokens"] / per_micro_batch))


def deepspeed_config(ds: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed's JSON config from the trainer's `deepspeed` settings. Batch size, accumulation,
    precision and clipping are left out: Lightning fills them in from the Trainer."""
    zero: dict[str, Any] = {"stage": ds["stage"], "overlap_comm": True, "contiguous_gradients": True}
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds["offload_params"]:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    # a torch optimizer (fused AdamW) rather than DeepSpeed's, whose JIT build is slow; offload then
    # has to be told that a torch optimizer is fine
    return {"zero_optimization": zero, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}


def make_strategy(tr: dict[str, Any]):
    if tr["strategy"] != "deepspeed":
        return tr["strategy"]
    from pytorch_lightning.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(config=deepspeed_config(tr["deepspeed"]))


def make_logger(cfg: dict[str, Any]) -> WandbLogger | bool:
    """A W&B logger (offline unless configured online), or False when logging is off."""
    log_cfg = cfg["logger"]
    if not log_cfg["enabled"]:
        return False
    Path(log_cfg["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=log_cfg["project"], name=cfg["run_name"], group=cfg["model"]["name"],
                       save_dir=log_cfg["save_dir"], mode=log_cfg["mode"], log_model=False, config=cfg)


def make_trainer(cfg: dict[str, Any], ckpt_dir: Path, logger, callbacks: list[pl.Callback]) -> pl.Trainer:
    tr, block_size = cfg["trainer"], cfg["model"]["block_size"]
    accumulate = accumulation(tr, block_size)
    tokens_per_step = tr["batch_size"] * block_size * accumulate
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=tr["checkpoint_every_n_steps"]),
                 StepProgress(tokens_per_step), Throughput(tokens_per_step, tr["peak_flops"]),
                 NonFiniteGuard(ckpt_dir / "nonfinite-skipped.ckpt"),
                 SaveOnSignal(ckpt_dir / "last.ckpt"), SampleTable(tr["sample_every_n_steps"], [cfg["prompt"]]),
                 *callbacks]
    return pl.Trainer(accelerator=tr["accelerator"], devices=tr["devices"], num_nodes=tr["num_nodes"],
                      strategy=make_strategy(tr), precision=tr["precision"], max_steps=tr["max_steps"],
                      accumulate_grad_batches=accumulate, gradient_clip_val=tr["gradient_clip_val"],
                      val_check_interval=tr["val_check_interval"], check_val_every_n_epoch=None,
                      limit_val_batches=tr["limit_val_batches"], log_every_n_steps=tr["log_every_n_steps"],
                      logger=logger, callbacks=callbacks, enable_model_summary=False, profiler=tr["profiler"])


def fit(cfg: dict[str, Any], data_dir: str, ckpt_dir: str, callbacks: list[pl.Callback] = (),
        init_from: str | None = None) -> dict[str, Any]:
    """Train on `data_dir`'s shards, resuming from `ckpt_dir`/last.ckpt when it exists and
    `trainer.resume` is on, else starting from the weights of the transformers folder `init_from`
    when given; returns the last checkpoint and the final metrics. A run stopped by SIGTERM or SIGINT
    saves last.ckpt and returns with `interrupted` naming the signal (else None)."""
    pl.seed_everything(cfg["seed"], workers=True)
    tr = cfg["trainer"]
    last = Path(ckpt_dir) / "last.ckpt"
    module = GPTLightning(cfg["model"], cfg["optim"], tr["max_steps"], tr["activation_checkpointing"], tr["compile"])
    data = TokenDataModule(data_dir, cfg["model"]["block_size"], tr["batch_size"], cfg["seed"], tr["num_workers"])
    module.corpus = Manifest.read(data_dir).identity()  # recorded in every checkpoint
    logger = make_logger(cfg)
    if logger:
        record_corpus(logger.experiment, data_dir)
    trainer = make_trainer(cfg, Path(ckpt_dir), logger, list(callbacks))
    resume = tr["resume"] and last.exists()
    if init_from and not resume:  # a run's own checkpoint wins over its starting point
        module.model.copy_weights_from(GPT.from_hf(init_from))
    print(f"train: {cfg['model']['name']} ({module.model.num_params() / 1e6:.1f}M parameters) on "
          f"{len(TokenShards(Path(data_dir), 'train')):,} tokens from {data_dir}, {tr['max_steps']} steps, "
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
