"""The LightningModule: GPT-2 training with AdamW, warmup + cosine schedule, W&B-style metric names."""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy

from model.gpt import GPT, GPTConfig, lm_loss


def cosine_with_warmup(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup, then cosine decay to `min_lr_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class GPTLightning(pl.LightningModule):
    def __init__(self, model: dict[str, Any], optim: dict[str, Any], max_steps: int,
                 activation_checkpointing: bool = False, compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(GPTConfig.from_settings(model, activation_checkpointing=activation_checkpointing))
        self.optim = optim
        self.max_steps = max_steps
        self.train_loss = self.loss  # compiled in configure_model when `compile` is on
        self.compiled = False
        self.corpus: dict[str, Any] = {}  # the identity of the corpus trained on (`Manifest.identity`)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model(x), y)

    def configure_model(self) -> None:
        """torch.compile once the strategy is known: the forward and the loss as one graph, as the plain
        compiled loop does (Inductor can then fuse the loss's fp32 upcast and softmax); under DeepSpeed,
        which refuses a compiled module, the blocks in place."""
        if not self.hparams.compile or self.compiled:
            return
        if self.on_deepspeed():
            for block in self.model.h:
                block.compile()
        else:
            self.train_loss = torch.compile(self.loss)
        self.compiled = True

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.train_loss(x, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """The step's gradient norm, on the device: logged, used to clip, and tested. A fused torch
        optimizer skips a step whose norm is not finite, on the device (its `found_inf`, as PyTorch's
        GradScaler uses it), so one bad batch cannot put NaN into the weights; NonFiniteGuard stops the
        run at its next read. DeepSpeed's ZeRO-2/3 keep the gradients in their partitions: no norm here."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.skips_nonfinite = False
        if self.grad_norm is None:
            return
        self.log("grad_norm", self.grad_norm)
        inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer in Lightning's wrapper
        if isinstance(inner, torch.optim.Optimizer) and inner.param_groups[0].get("fused") and not self.on_deepspeed():
            inner.found_inf = (~torch.isfinite(self.grad_norm)).float()
            self.skips_nonfinite = True

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip with the norm computed for the step. Lightning's own clipping refuses a fused optimizer
        under mixed precision (it assumes fp16's gradient scaler, which bf16 does not use); DeepSpeed
        clips inside its own step."""
        if self.on_deepspeed() or self.grad_norm is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(self.parameters(), gradient_clip_val, self.grad_norm)

    def on_deepspeed(self) -> bool:
        return isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def on_validation_epoch_start(self) -> None:
        self.val_losses: list[torch.Tensor] = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_losses.append(lm_loss(self.model(x), y).detach())

    def on_validation_epoch_end(self) -> None:
        # every window has the same length, so the mean of window means is the per-token mean
        loss = torch.stack(self.val_losses).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/perplexity", torch.exp(loss), sync_dist=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            # weight decay on matrices (linear weights, embeddings), never on biases or LayerNorms
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.optim["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel for all parameters, on the GPU and the CPU, and it can skip a step on the
        # device (`found_inf`), which NonFiniteGuard uses
        opt = torch.optim.AdamW(groups, lr=self.optim["lr"], betas=tuple(self.optim["betas"]), fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_with_warmup(
            step, self.optim["warmup_steps"], self.max_steps, self.optim["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        # the last logged values (train/loss, val/loss...) and the corpus, for the model card of an export
        checkpoint["metrics"] = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        checkpoint["corpus"] = self.corpus

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
