"""A 2-process DDP run on the CPU (gloo) over a corpus at a store URL, each rank writing the first token
of every window it trained on: `python -m tests.ddp_windows URL OUT STEPS` (Lightning starts rank 1 by
running the same command again)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl

from flows.common import load_config
from model.train import fit


class Windows(pl.Callback):
    """Each window's first token, which in the test corpus (tokens 0, 1, 2, …) is its start."""

    def __init__(self, out: Path):
        self.out, self.starts = out, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts += batch[0][:, 0].tolist()

    def on_train_end(self, trainer, module) -> None:
        (self.out / f"windows-rank{trainer.global_rank}.json").write_text(json.dumps(self.starts))


def main(url: str, out: str, steps: str) -> None:
    cfg = load_config(["logger=none", "model=gpt2-tiny", "model.block_size=16", "data.batch_size=4",
                       "trainer.strategy=ddp", "trainer.devices=2", f"trainer.max_steps={steps}",
                       "trainer.limit_val_batches=0", "callbacks.sample_every_n_steps=0", "fit.resume=false",
                       f"data.cache_dir={out}/cache", f"paths.data={out}"])
    fit(cfg, url, f"{out}/ckpt", [Windows(Path(out))])


if __name__ == "__main__":
    main(*sys.argv[1:])
