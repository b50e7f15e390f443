"""Token shards from the corpus flow as training windows: memory-mapped, seeded, resumable."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def load_split(data_dir: Path, split: str) -> np.ndarray:
    """All tokens of a split, concatenated in shard order (memory-mapped when there is one shard)."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    shards = [np.memmap(data_dir / s["bin"], dtype=np.uint16, mode="r") for s in manifest["splits"][split]]
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {data_dir}: build the corpus first (make corpus)")
    return shards[0] if len(shards) == 1 else np.concatenate(shards)


class RandomWindows(IterableDataset):
    """An endless stream of random (x, y) windows of `block_size` tokens, determined by the seed.

    `start` skips that many windows, so that a resumed run continues the exact stream.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int, start: int = 0):
        if len(tokens) <= block_size:
            raise ValueError(f"{len(tokens)} tokens cannot fill a window of {block_size}")
        self.tokens, self.block_size, self.seed, self.start = tokens, block_size, seed, start

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        high = len(self.tokens) - self.block_size
        rng.integers(0, high, size=self.start)  # the windows a previous run already consumed
        while True:
            start = int(rng.integers(0, high))
            chunk = torch.from_numpy(self.tokens[start:start + self.block_size + 1].astype(np.int64))
            yield chunk[:-1], chunk[1:]


class ConsecutiveWindows(Dataset):
    """Non-overlapping (x, y) windows covering a split once, for validation."""

    def __init__(self, tokens: np.ndarray, block_size: int):
        self.tokens, self.block_size = tokens, block_size

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block_size)

    def __getitem__(self, i: int):
        start = i * self.block_size
        chunk = torch.from_numpy(self.tokens[start:start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class TokenDataModule(pl.LightningDataModule):
    """Train on random windows, validate on consecutive ones; the train stream's position is saved
    in every checkpoint, so a resumed run sees exactly the windows it would have seen."""

    def __init__(self, data_dir: str, block_size: int, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.block_size, self.batch_size, self.seed, self.num_workers = block_size, batch_size, seed, num_workers
        self.start = 0

    def windows_consumed(self) -> int:
        return self.trainer.global_step * self.trainer.accumulate_grad_batches * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {"windows_consumed": self.windows_consumed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = state["windows_consumed"]

    def train_dataloader(self) -> DataLoader:
        # each data-parallel rank draws its own stream
        seed = self.seed + (self.trainer.global_rank if self.trainer else 0)
        windows = RandomWindows(load_split(self.data_dir, "train"), self.block_size, seed, self.start)
        # one worker at most: several would each replay the same stream
        return DataLoader(windows, batch_size=self.batch_size, num_workers=min(self.num_workers, 1))

    def val_dataloader(self) -> DataLoader:
        windows = ConsecutiveWindows(load_split(self.data_dir, "val"), self.block_size)
        return DataLoader(windows, batch_size=self.batch_size, num_workers=self.num_workers)
