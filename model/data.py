"""Token shards from the corpus flow as training windows: memory-mapped, seeded, resumable."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from model.manifest import Manifest


class TokenShards:
    """The token files of one split as one sequence: each file memory-mapped on first use, never
    concatenated, so memory does not grow with the corpus. `tokens[a:b]` reads across file ends."""

    def __init__(self, data_dir: Path, split: str):
        manifest = Manifest.read(str(data_dir))
        self.files = [data_dir / s["bin"] for s in manifest.splits[split]]
        if not self.files:
            raise FileNotFoundError(f"no {split} shards in {data_dir}: build the corpus first (make corpus)")
        sizes = [s["tokens"] for s in manifest.splits[split]]
        self.starts = np.cumsum([0] + sizes, dtype=np.int64)
        self.maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _file(self, i: int) -> np.memmap:
        if i not in self.maps:
            self.maps[i] = np.memmap(self.files[i], dtype=np.uint16, mode="r")
        return self.maps[i]

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(len(self))
        first = int(np.searchsorted(self.starts, start, side="right") - 1)
        parts, i = [], first
        while start < stop:
            local = start - int(self.starts[i])
            take = min(stop - start, int(self.starts[i + 1]) - start)
            parts.append(self._file(i)[local:local + take])
            start, i = start + take, i + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


class RandomWindows(IterableDataset):
    """An endless stream of random (x, y) windows of `block_size` tokens, determined by the seed.

    `start` skips that many windows, so that a resumed run continues the exact stream.
    """

    def __init__(self, tokens: TokenShards | np.ndarray, block_size: int, seed: int, start: int = 0):
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

    def __init__(self, tokens: TokenShards | np.ndarray, block_size: int):
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
        windows = RandomWindows(TokenShards(self.data_dir, "train"), self.block_size, seed, self.start)
        # one worker at most: several would each replay the same stream
        return DataLoader(windows, batch_size=self.batch_size, num_workers=min(self.num_workers, 1))

    def val_dataloader(self) -> DataLoader:
        windows = ConsecutiveWindows(TokenShards(self.data_dir, "val"), self.block_size)
        return DataLoader(windows, batch_size=self.batch_size, num_workers=self.num_workers)
