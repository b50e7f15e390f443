"""Token shards from the corpus flow as training windows: from a local folder or a store, in a seeded
order that a resumed run continues exactly.

- `TokenShards`: the token files of one split as one sequence, each memory-mapped; from a store URL
  (`s3://…`), each file is first copied whole into a bounded local cache (`ShardCache`).
- `Epochs` (`data.sampling=shuffle`): every window exactly once per epoch, in a two-level shuffle:
  the files permuted each epoch, windows shuffled within runs of `buffer`. Ranks take every
  world-th window, DataLoader workers whole batches in turn; the tail that does not divide evenly is
  dropped and counted.
- `RandomDraws` (`data.sampling=random`): nanoGPT's random windows, drawn with replacement.

Either maps (rank, batch number) to window starts in O(1) time and memory, so resuming after any
number of batches costs nothing, and the sampler's memory does not grow with the corpus.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from model.manifest import Manifest

log = logging.getLogger(__name__)


def is_store(url: str | Path) -> bool:
    """A store URL (`s3://…`), not a local path."""
    return "://" in str(url) and not str(url).startswith("file://")


class ShardCache:
    """Whole token files from a store, copied into `folder` on first use and kept while the folder
    holds at most `max_bytes` (least recently used out first; never the file just fetched). Several
    processes may share the folder: a file appears under its name only once complete, and one
    removed while another process has it mapped stays readable there."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes

    def get(self, url: str) -> Path:
        local = self.folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rsplit('/', 1)[-1]}"
        if local.exists():
            os.utime(local)  # recently used
            return local
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")
        fs, path = fsspec.core.url_to_fs(url)
        fs.get_file(path, str(tmp))  # the store client retries what fails on the machine's side
        tmp.replace(local)
        self.evict(keep=local)
        return local

    def evict(self, keep: Path) -> None:
        files = sorted((p for p in self.folder.iterdir() if not p.name.endswith(".tmp")),
                       key=lambda p: p.stat().st_mtime if p.exists() else 0)
        total = sum(p.stat().st_size for p in files if p.exists())
        for old in files:
            if total <= self.max_bytes:
                break
            if old != keep and old.exists():
                total -= old.stat().st_size
                old.unlink(missing_ok=True)


class TokenShards:
    """The token files of one split (of a local folder or a store URL) as one sequence: each file
    memory-mapped on first use, never concatenated, so memory does not grow with the corpus.
    `tokens[a:b]` reads across file ends."""

    def __init__(self, data_dir: str | Path, split: str, cache: ShardCache | None = None, max_open: int = 8):
        manifest = Manifest.read(str(data_dir))
        self.urls = [f"{str(data_dir).rstrip('/')}/{s['bin']}" for s in manifest.splits[split]]
        if not self.urls:
            raise FileNotFoundError(f"no {split} shards in {data_dir}: build the corpus first (make corpus)")
        self.sizes = np.array([s["tokens"] for s in manifest.splits[split]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.cache = cache if is_store(data_dir) else None
        if self.cache is None and is_store(data_dir):
            raise ValueError(f"{data_dir} is a store URL: reading it needs a ShardCache")
        self.max_open = max_open
        self.maps: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers map the files themselves
        return {**self.__dict__, "maps": OrderedDict()}

    def _file(self, i: int) -> np.memmap:
        if i in self.maps:
            self.maps.move_to_end(i)
        else:
            path = self.cache.get(self.urls[i]) if self.cache else Path(self.urls[i].removeprefix("file://"))
            self.maps[i] = np.memmap(path, dtype=np.uint16, mode="r")
            if len(self.maps) > self.max_open:
                self.maps.popitem(last=False)
        return self.maps[i]

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """The `length` tokens from each start, as rows: one gather per file (a window across a file end
        is read by slices)."""
        out = np.empty((len(starts), length), dtype=np.uint16)
        files = np.searchsorted(self.starts, starts, side="right") - 1
        inside = starts + length <= self.starts[files + 1]
        for f in np.unique(files[inside]):
            rows = np.flatnonzero(inside & (files == f))
            out[rows] = self._file(int(f))[(starts[rows] - self.starts[f])[:, None] + np.arange(length)]
        for row in np.flatnonzero(~inside):
            out[row] = self[int(starts[row]):int(starts[row]) + length]
        return out

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


class WindowOrder(Protocol):
    """Which windows one rank's batches read: the token offsets of batch `g` (counted from the start
    of training, across epochs)."""

    def batch_starts(self, g: int) -> np.ndarray: ...


class Epochs:
    """Every window of `block_size` + 1 tokens (stride `block_size`, within a file) once per epoch, in
    a seeded two-level shuffle: each epoch permutes the files, and the windows of that order are
    shuffled within consecutive runs of `buffer`. Position p of an epoch goes to rank p mod `world`;
    each rank's positions are cut into batches of `batch`. Held: the files' sizes and one run's
    permutation, whatever the number of windows."""

    def __init__(self, sizes: np.ndarray, block_size: int, seed: int, batch: int, world: int = 1, rank: int = 0,
                 buffer: int = 65536):
        sizes = np.asarray(sizes, dtype=np.int64)
        self.file_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.windows = np.maximum(sizes - 1, 0) // block_size  # per file
        self.block_size, self.seed, self.batch, self.world, self.rank = block_size, seed, batch, world, rank
        self.buffer = buffer
        self.total = int(self.windows.sum())
        self.batches = self.total // world // batch  # per rank and epoch
        if not self.batches:
            raise ValueError(f"{self.total:,} windows of {block_size} tokens cannot fill a batch of {batch} "
                             f"on each of {world} ranks")
        self.dropped = self.total - self.batches * batch * world  # per epoch: the tail across ranks and batches
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None
        self._runs: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def batch_starts(self, g: int) -> np.ndarray:
        epoch, b = divmod(g, self.batches)
        items = b * self.batch + np.arange(self.batch, dtype=np.int64)  # this rank's positions in the epoch
        return self.window_starts(epoch, self.shuffled(epoch, items * self.world + self.rank))

    def shuffled(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """The window each epoch position holds after the shuffle within its run of `buffer`."""
        runs = positions // self.buffer
        out = np.empty_like(positions)
        for run in np.unique(runs):
            inside = runs == run
            out[inside] = run * self.buffer + self.permutation(epoch, int(run))[positions[inside] - run * self.buffer]
        return out

    def permutation(self, epoch: int, run: int) -> np.ndarray:
        key = (epoch, run)
        if key not in self._runs:
            length = min(self.buffer, self.total - run * self.buffer)
            self._runs[key] = np.random.default_rng([self.seed, epoch, run]).permutation(length)
            if len(self._runs) > 2:  # a batch spans at most two runs, unless the buffer is tiny
                self._runs.popitem(last=False)
        return self._runs[key]

    def window_starts(self, epoch: int, windows: np.ndarray) -> np.ndarray:
        """Token offsets of the epoch's windows, numbered in its file order."""
        if self._order is None or self._order[0] != epoch:
            files = np.random.default_rng([self.seed, epoch, 2**32]).permutation(len(self.windows))
            self._order = (epoch, files, np.cumsum(self.windows[files]))
        _, files, ends = self._order
        slot = np.searchsorted(ends, windows, side="right")
        f = files[slot]
        within = windows - (ends[slot] - self.windows[f])
        return self.file_starts[f] + within * self.block_size


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each value (SplitMix64's finaliser): independent-looking draws by index."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class RandomDraws:
    """nanoGPT's windows: starts drawn uniformly with replacement, anywhere in the split. Draw k is a
    hash of (seed, k), so batch g of any rank is computed directly."""

    def __init__(self, tokens: int, block_size: int, seed: int, batch: int, world: int = 1, rank: int = 0):
        if tokens <= block_size:
            raise ValueError(f"{tokens:,} tokens cannot fill a window of {block_size}")
        self.high, self.seed, self.batch, self.world, self.rank = tokens - block_size, seed, batch, world, rank
        self.dropped = 0

    def batch_starts(self, g: int) -> np.ndarray:
        draws = (g * self.world + self.rank) * self.batch + np.arange(self.batch, dtype=np.uint64)
        return (splitmix64(splitmix64(np.uint64(self.seed)) ^ draws.astype(np.uint64)) % np.uint64(self.high)).astype(
            np.int64)


class WindowBatches(IterableDataset):
    """Endless (x, y) batches of one rank from `order`, from batch `first` on. DataLoader worker w of
    W makes batches first + w, first + w + W, …, which the DataLoader hands out in turn: the same
    stream with any number of workers."""

    def __init__(self, tokens: TokenShards | np.ndarray, order: WindowOrder, block_size: int, first: int = 0):
        self.tokens, self.order, self.block_size, self.first = tokens, order, block_size, first

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for g in itertools.count(self.first + worker, workers):
            starts = self.order.batch_starts(g)
            if isinstance(self.tokens, TokenShards):
                chunk = self.tokens.windows(starts, self.block_size + 1)
            else:
                chunk = self.tokens[starts[:, None] + np.arange(self.block_size + 1)]
            chunk = torch.from_numpy(chunk.astype(np.int64))
            yield chunk[:, :-1], chunk[:, 1:]


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
    """Train on `sampling`'s windows (shuffle: each once per epoch; random: nanoGPT's), validate on
    consecutive ones. The number of batches this rank consumed is saved in every checkpoint, so a
    resumed run sees exactly the windows it would have seen."""

    def __init__(self, data_dir: str, block_size: int, batch_size: int, seed: int, num_workers: int = 0,
                 sampling: str = "shuffle", shuffle_buffer: int = 65536, cache_dir: str | None = None,
                 cache_gb: float = 20.0):
        super().__init__()
        self.data_dir, self.block_size, self.batch_size, self.seed = str(data_dir), block_size, batch_size, seed
        self.num_workers, self.sampling, self.shuffle_buffer = num_workers, sampling, shuffle_buffer
        self.cache = ShardCache(cache_dir, int(cache_gb * 2**30)) if is_store(data_dir) else None
        self.first = 0

    def batches_consumed(self) -> int:
        return self.trainer.global_step * self.trainer.accumulate_grad_batches

    def state_dict(self) -> dict[str, Any]:
        return {"batches_consumed": self.batches_consumed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = state.get("batches_consumed", state.get("windows_consumed", 0) // self.batch_size)

    def shards(self, split: str) -> TokenShards:
        return TokenShards(self.data_dir, split, self.cache)

    def order(self, tokens: TokenShards, world: int = 1, rank: int = 0) -> Epochs | RandomDraws:
        if self.sampling == "random":
            return RandomDraws(len(tokens), self.block_size, self.seed, self.batch_size, world, rank)
        return Epochs(tokens.sizes, self.block_size, self.seed, self.batch_size, world, rank, self.shuffle_buffer)

    def train_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        tokens = self.shards("train")
        order = self.order(tokens, world, rank)
        if order.dropped and rank == 0:
            log.warning("data: %d windows of each epoch dropped (the tail across %d ranks and batches of %d)",
                        order.dropped, world, self.batch_size)
        return DataLoader(WindowBatches(tokens, order, self.block_size, self.first), batch_size=None,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        windows = ConsecutiveWindows(self.shards("val"), self.block_size)
        return DataLoader(windows, batch_size=self.batch_size, num_workers=self.num_workers)

