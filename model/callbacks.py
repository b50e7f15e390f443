"""Lightning callbacks: a step progress bar, throughput and MFU, a guard against non-finite loss,
saving on SIGTERM/SIGINT, and a table of samples in W&B."""
from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar
from tqdm import tqdm


def stepped(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this micro-batch ended an optimizer step (not one in the middle of accumulation)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


def at_log_step(trainer: pl.Trainer) -> bool:
    """Whether the step just taken is one that logs: every `log_every_n_steps`, and the last."""
    return trainer.global_step % trainer.log_every_n_steps == 0 or trainer.global_step == trainer.max_steps


class StepProgress(ProgressBar):
    """One bar over optimizer steps, shown from the first one: step / max_steps, loss, tokens/s, ETA.
    A resumed run starts at its step; validation runs without a bar of its own. The loss and rate
    shown are refreshed every `log_every_n_steps`, as logged: never a wait for the GPU each step.

    Lightning's own bar counts batches per epoch, which on a step-bounded run of one endless epoch
    reads "Epoch 0/-2" and says nothing about how far the run has gone.
    """

    def __init__(self, tokens_per_step: int):
        super().__init__()
        self.tokens_per_step = tokens_per_step
        self.bar: tqdm | None = None
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, module) -> None:
        if self.enabled and trainer.is_global_zero:
            self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, desc="train (first step: compiling and warming up)")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.bar is None or not stepped(trainer, batch_idx):
            return
        self.bar.set_description("train", refresh=False)
        step = trainer.global_step
        if at_log_step(trainer) or self.bar.n == self.bar.initial:
            # the loss lives on the GPU: reading it waits for the step, so only as often as it is logged
            rate = self.bar.format_dict.get("rate")
            loss = trainer.callback_metrics.get("train/loss")
            self.bar.set_postfix({"loss": f"{float(loss):.3f}" if loss is not None else "-",
                                  "tok/s": f"{rate * self.tokens_per_step:,.0f}" if rate else "-"}, refresh=False)
        self.bar.update(step - self.bar.n)

    def on_train_end(self, trainer, module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressLines(pl.Callback):
    """A progress line every `log_every_n_steps` optimizer steps and at the last one, handed to `emit`
    (the Prefect run's logger, so the UI shows how far training is): step, loss, tokens/s, ETA."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self.start: tuple[float, int] | None = None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not stepped(trainer, batch_idx):
            return
        step, now = trainer.global_step, time.perf_counter()
        if self.start is None:
            self.start = (now, step)
            self.tokens_per_step = batch[0].numel() * trainer.accumulate_grad_batches * trainer.world_size
        if not at_log_step(trainer):
            return
        rate = (step - self.start[1]) / max(now - self.start[0], 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        eta = f"{(trainer.max_steps - step) / rate:,.0f} s" if rate else "?"
        self.emit(f"train step {step}/{trainer.max_steps}: loss {float(loss) if loss is not None else float('nan'):.3f}, "
                  f"{rate * self.tokens_per_step:,.0f} tokens/s, ETA {eta}")


class Throughput(pl.Callback):
    """Logs perf/tokens_seen, perf/tokens_per_s and, given the hardware's peak FLOP/s, perf/mfu.

    The speed is measured over each `log_every_n_steps` interval: waiting for the GPU every step
    would stop the CPU from running ahead of it and slow down what is being measured.
    """

    def __init__(self, tokens_per_step: int, peak_flops: float | None):
        self.tokens_per_step, self.peak_flops = tokens_per_step, peak_flops
        self.last: tuple[float, int] | None = None
        self.speed: dict[str, float] = {}

    def on_train_start(self, trainer, module) -> None:
        self.flops_per_token = module.model.flops_per_token()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not stepped(trainer, batch_idx):
            return
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self.last is not None:
                tokens_per_s = self.tokens_per_step * (step - self.last[1]) / (now - self.last[0])
                self.speed = {"perf/tokens_per_s": tokens_per_s}
                if self.peak_flops:
                    self.speed["perf/mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * trainer.world_size)
            self.last = (now, step)
        module.log_dict({**self.speed, "perf/tokens_seen": float(step * self.tokens_per_step)})


class NonFiniteGuard(pl.Callback):
    """Stops training on a NaN or infinite loss or gradient norm with a clear error, without waiting
    for the GPU every step: each step is tested on the device, and whether any failed is read once
    every `log_every_n_steps`. Where the module skipped the failed steps (`skips_nonfinite`: a fused
    optimizer on one device), the weights are all finite: they are saved to `path`. Elsewhere
    (DeepSpeed) the error names the last checkpoint instead."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_start(self, trainer, module) -> None:
        # all on the device: whether this step failed, how many failed, the first that did (-1: none)
        self.step_failed = torch.zeros((), dtype=torch.bool, device=module.device)
        self.failed = torch.zeros((), dtype=torch.int64, device=module.device)
        self.first = torch.full_like(self.failed, -1)
        self.all_skipped = True

    def on_before_backward(self, trainer, module, loss) -> None:
        self.step_failed = self.step_failed | ~torch.isfinite(loss.detach())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not stepped(trainer, batch_idx):
            return
        if getattr(module, "grad_norm", None) is not None:
            self.step_failed = self.step_failed | ~torch.isfinite(module.grad_norm)
        self.all_skipped &= getattr(module, "skips_nonfinite", False)
        step = trainer.global_step  # steps taken, this one included
        self.first = torch.where((self.first < 0) & self.step_failed, step - 1, self.first)
        self.failed += self.step_failed
        self.step_failed = torch.zeros_like(self.step_failed)
        if not at_log_step(trainer) or not self.failed:  # the one read from the device per interval
            return
        first, failed = int(self.first), int(self.failed)
        what = f"training loss or gradients became non-finite at step {first} ({failed} step(s) by step {step})"
        if self.all_skipped:
            trainer.save_checkpoint(self.path)
            raise FloatingPointError(f"{what}; those steps were skipped, and the weights, all finite, are "
                                     f"saved in {self.path}")
        raise FloatingPointError(f"{what}; the weights since then are not to be trusted: resume from the "
                                 f"last checkpoint in {self.path.parent}")


class SaveOnSignal(pl.Callback):
    """On SIGTERM or SIGINT (a pre-empted or cancelled job), save `path` and stop cleanly after the
    step; `received` then names the signal."""

    def __init__(self, path: Path):
        self.path, self.received = path, None

    def on_train_start(self, trainer, module) -> None:
        self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGTERM, signal.SIGINT)}

    def _note(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.received:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True
            print(f"{self.received}: saved {self.path} at step {trainer.global_step}")

    def on_train_end(self, trainer, module) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class SampleTable(pl.Callback):
    """Every `every_n_steps`, adds a generated continuation of each prompt to a W&B table."""

    def __init__(self, every_n_steps: int, prompts: list[str], max_new_tokens: int = 48):
        self.every, self.prompts, self.max_new_tokens = every_n_steps, prompts, max_new_tokens
        self.rows: list[list] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every or step % self.every or not trainer.is_global_zero or not hasattr(trainer.logger, "log_table"):
            return
        from model.sample import sample_text  # needs the BPE files, only when samples are asked for

        self.rows += [[step, p, sample_text(module.model, p, self.max_new_tokens, seed=step)] for p in self.prompts]
        trainer.logger.log_table("samples", columns=["step", "prompt", "text"], data=self.rows, step=step)
        module.model.train()
