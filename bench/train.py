"""`make bench-train`: tokens/s and MFU of the project's training step (Lightning + the configured
strategy) on random tokens, to print beside ../shared/bench/gpu_anchor.py measured in the same run.

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

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from flows.common import load_config
from model.data import RandomWindows
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
    module = GPTLightning(cfg["model"], cfg["optim"], tr["max_steps"], cfg["fit"]["activation_checkpointing"],
                          cfg["fit"]["compile"])
    tokens = np.random.default_rng(0).integers(0, 50257, 10_000_000, dtype=np.uint16)
    data = DataLoader(RandomWindows(tokens, block, cfg["seed"]), batch_size=batch)
    timer = StepTimer()
    trainer = make_trainer(cfg, Path(mkdtemp()), False, [timer])
    trainer.fit(module, train_dataloaders=data)
    steps = tr["max_steps"] - WARMUP_STEPS
    tokens_per_s = steps * batch * block * accumulation(cfg) / timer.seconds
    n_params = sum(p.numel() for p in module.parameters())
    strategy = tr["strategy"] if isinstance(tr["strategy"], str) else tr["strategy"]["_target_"].rsplit(".", 1)[1]
    result = {"name": f"opengpt2_{cfg['model']['name']}_{strategy}", "tok_per_s": round(tokens_per_s),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "B": batch, "T": block, "params_M": round(n_params / 1e6, 1),
              "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None}
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
