"""`make bench-train`: tokens/s and MFU of the project's training step (Lightning + the configured
strategy, fed by the project's loader from a token folder of random tokens). On a GPU, to print
beside ../shared/bench/gpu_anchor.py measured in the same run; on a CPU, beside a plain PyTorch loop
with no framework (the same GPT, windows, batch, fused AdamW, clipping and schedule), the two
alternated, best of 3 each.

    python -m bench.train [memory_cap_gib=N] [hydra overrides]
Default: gpt2 on the GPU with deepspeed_zero2, B=16 x T=1024; without a GPU, gpt2-tiny on the CPU.
`memory_cap_gib` limits this process's GPU memory (torch.cuda.set_per_process_memory_fraction).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from tempfile import mkdtemp

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bench.data import write_corpus
from flows.common import load_config
from model.data import Epochs, TokenDataModule, TokenShards, WindowBatches
from model.gpt import lm_loss
from model.lit import GPTLightning
from model.train import accumulation, make_trainer

WARMUP_STEPS = 8
OPENWEBTEXT_TOKENS = 9e9  # GPT-2 tokens in OpenWebText: what one epoch of the seed's corpus costs


class StepTimer(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP_STEPS and not hasattr(self, "start"):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.seconds = time.perf_counter() - self.start


def lightning_run(cfg: dict, data_dir: str) -> tuple[float, GPTLightning]:
    """Tokens/s of the project's path: `make_trainer` and `TokenDataModule`, after the warmup steps."""
    tr, d = cfg["trainer"], cfg["data"]
    module = GPTLightning(cfg["model"], cfg["optim"], tr["max_steps"], cfg["fit"]["activation_checkpointing"],
                          cfg["fit"]["compile"])
    data = TokenDataModule(data_dir, cfg["model"]["block_size"], d["batch_size"], cfg["seed"], d["num_workers"],
                           d["sampling"], d["shuffle_buffer"])
    timer = StepTimer()
    make_trainer(cfg, Path(mkdtemp()), False, [timer]).fit(module, datamodule=data)
    steps = tr["max_steps"] - WARMUP_STEPS
    return steps * d["batch_size"] * cfg["model"]["block_size"] * accumulation(cfg) / timer.seconds, module


def plain_run(cfg: dict, data_dir: str) -> float:
    """Tokens/s of a plain PyTorch loop over the same windows: forward, loss, backward, clip, fused
    AdamW step and LR schedule, as `GPTLightning` configures them."""
    torch.manual_seed(cfg["seed"])
    module = GPTLightning(cfg["model"], cfg["optim"], cfg["trainer"]["max_steps"])
    model, optimizers = module.model, module.configure_optimizers()
    opt, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    block, batch = cfg["model"]["block_size"], cfg["data"]["batch_size"]
    tokens = TokenShards(data_dir, "train")
    loader = DataLoader(WindowBatches(tokens, Epochs(tokens.sizes, block, cfg["seed"], batch), block), batch_size=None)
    model.train()
    for step, (x, y) in zip(range(cfg["trainer"]["max_steps"]), loader):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["trainer"]["gradient_clip_val"])
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
    return (cfg["trainer"]["max_steps"] - WARMUP_STEPS) * batch * block / (time.perf_counter() - start)


def main(args: list[str]) -> None:
    caps = [float(a.split("=", 1)[1]) for a in args if a.startswith("memory_cap_gib=")]
    overrides = [a for a in args if not a.startswith("memory_cap_gib=")]
    if caps and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(caps[0] * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    defaults = (["model=gpt2", "trainer=deepspeed_zero2", "data.global_batch_tokens=null"] if torch.cuda.is_available()
                else ["model=gpt2-tiny", "trainer=cpu"])
    cfg = load_config([*defaults, "logger=none", "trainer.limit_val_batches=0", "callbacks.sample_every_n_steps=0",
                       "callbacks.checkpoint_every_n_steps=100000", "fit.resume=false", "trainer.max_steps=30",
                       *overrides])
    tr, batch, block = cfg["trainer"], cfg["data"]["batch_size"], cfg["model"]["block_size"]
    data_dir = str(Path(mkdtemp(prefix="bench-train-")) / "tokens")
    write_corpus(Path(data_dir), 10_000_000, files=1)
    plain = []
    if torch.cuda.is_available():
        tokens_per_s, module = lightning_run(cfg, data_dir)
    else:  # alternated, so that a slow spell of a shared machine hits both
        ours = []
        for _ in range(3):
            ours.append(lightning_run(cfg, data_dir))
            plain.append(plain_run(cfg, data_dir))
        tokens_per_s, module = max(ours, key=lambda run: run[0])
        print(f"CPU, {cfg['model']['name']}, batch {batch} x {block}, best of 3 alternated: project {tokens_per_s:,.0f} "
              f"tokens/s, plain PyTorch loop {max(plain):,.0f} tokens/s: x{tokens_per_s / max(plain):.3f} "
              f"(project runs: {', '.join(f'{r:,.0f}' for r, _ in ours)}; plain: "
              f"{', '.join(f'{r:,.0f}' for r in plain)})", file=sys.stderr)
    n_params = sum(p.numel() for p in module.parameters())
    strategy = tr["strategy"] if isinstance(tr["strategy"], str) else tr["strategy"]["_target_"].rsplit(".", 1)[1]
    result = {"name": f"opengpt2_{cfg['model']['name']}_{strategy}", "tok_per_s": round(tokens_per_s),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "B": batch, "T": block, "params_M": round(n_params / 1e6, 1),
              "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None}
    if plain:
        result.update(plain_tok_per_s=round(max(plain)), vs_plain=round(tokens_per_s / max(plain), 3))
    if cfg["callbacks"]["peak_flops"]:
        result["mfu"] = round(tokens_per_s * module.model.flops_per_token() / cfg["callbacks"]["peak_flops"], 3)
    devices = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    result["owt_wall_h"] = round(OPENWEBTEXT_TOKENS / tokens_per_s / 3600, 1)  # one pass at this rate
    result["owt_gpu_h"] = round(result["owt_wall_h"] * devices, 1) if torch.cuda.is_available() else None
    print(f"{cfg['model']['name']} on OpenWebText's ~{OPENWEBTEXT_TOKENS / 1e9:.0f}B tokens at {tokens_per_s:,.0f} tokens/s: "
          f"{result['owt_wall_h']:,} h" + (f", {result['owt_gpu_h']:,} GPU-hours" if result["owt_gpu_h"] else ""),
          file=sys.stderr)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
