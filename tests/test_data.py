"""Training windows: every window once per epoch across ranks and DataLoader workers, exact resume in
O(1), bounded sampler memory, and a 2-process DDP run reading its corpus from S3 (moto's server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import fsspec
import numpy as np
import pytest
from moto import server as moto_server
from torch.utils.data import DataLoader

from model.data import Epochs, RandomDraws, ShardCache, TokenShards, WindowBatches

REPO = Path(__file__).resolve().parent.parent
SIZES = np.array([1000, 517, 2048, 33, 800])  # tokens per file, one too short for a window


def starts_of(order, batches: range) -> list[int]:
    return [s for g in batches for s in order.batch_starts(g).tolist()]


def all_windows(sizes: np.ndarray, block: int) -> set[int]:
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return {int(o + k * block) for o, n in zip(offsets, sizes) for k in range((n - 1) // block)}


def test_ranks_together_read_every_window_once_per_epoch_and_drop_only_the_counted_tail():
    block, batch, world = 16, 4, 3
    ranks = [Epochs(SIZES, block, seed=7, batch=batch, world=world, rank=r, buffer=50) for r in range(world)]
    per_epoch = ranks[0].batches
    for epoch in range(2):
        seen = [starts_of(order, range(epoch * per_epoch, (epoch + 1) * per_epoch)) for order in ranks]
        flat = [s for rank in seen for s in rank]
        assert len(flat) == len(set(flat))  # no window twice, within a rank or across ranks
        assert set(flat) <= all_windows(SIZES, block)
        assert len(all_windows(SIZES, block)) - len(flat) == ranks[0].dropped < world * batch
    first, second = (starts_of(ranks[0], range(e * per_epoch, (e + 1) * per_epoch)) for e in range(2))
    assert first != second  # a new order each epoch


def test_dataloader_workers_make_the_same_stream_as_one_process():
    tokens = np.arange(SIZES.sum(), dtype=np.int64) % 50000
    order = Epochs(SIZES, 16, seed=1, batch=4)
    one = [x[:, 0].tolist() for (x, _), _ in zip(WindowBatches(tokens, order, 16), range(30))]
    loader = DataLoader(WindowBatches(tokens, order, 16), batch_size=None, num_workers=2)
    two = [x[:, 0].tolist() for (x, _), _ in zip(loader, range(30))]
    assert one == two
    assert [s for b in two for s in b] == starts_of(order, range(30))


def test_a_resumed_stream_continues_exactly_where_it_stopped():
    tokens = np.arange(SIZES.sum(), dtype=np.int64) % 50000
    for order in (Epochs(SIZES, 16, seed=3, batch=4, world=2, rank=1), RandomDraws(int(SIZES.sum()), 16, 3, 4, 2, 1)):
        whole = [x for (x, _), _ in zip(WindowBatches(tokens, order, 16), range(60))]
        resumed = [x for (x, _), _ in zip(WindowBatches(tokens, order, 16, first=37), range(23))]
        assert all((a == b).all() for a, b in zip(whole[37:], resumed))


def test_random_draws_differ_between_ranks_and_stay_inside_the_split():
    ranks = [RandomDraws(10_000, 64, seed=5, batch=8, world=2, rank=r) for r in range(2)]
    a, b = (starts_of(order, range(50)) for order in ranks)
    assert a != b and 0 <= min(a + b) and max(a + b) < 10_000 - 64


def test_the_sampler_at_1e8_windows_holds_one_buffer_and_resumes_in_constant_time():
    block, windows_per_file = 1024, 100_000
    sizes = np.full(1000, windows_per_file * block + 1)  # 1e8 windows, 1e11 tokens: an index, no data
    tracemalloc.start()
    started = time.perf_counter()
    order = Epochs(sizes, block, seed=0, batch=16, world=8, rank=3)
    starts = [order.batch_starts(g) for g in (0, order.batches // 2, 3 * order.batches + 123)]
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert order.total == 10**8 and seconds < 1.0
    assert peak < 2 * order.buffer * 8 + (1 << 20)  # two runs' permutations and the file table
    for found in starts:
        assert ((found // (windows_per_file * block + 1)) < 1000).all() and (found % (windows_per_file * block + 1)
                                                                             % block == 0).all()


def test_the_store_cache_keeps_at_most_its_bound_and_never_the_file_in_use(tmp_path):
    for k in range(3):
        (tmp_path / f"f{k}.bin").write_bytes(bytes(1000))
    cache = ShardCache(tmp_path / "cache", max_bytes=1500)
    got = [cache.get(f"file://{tmp_path}/f{k}.bin") for k in range(3)]
    assert [p.exists() for p in got] == [False, False, True]
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 1500


@pytest.fixture(scope="module")
def s3_corpus():
    """A token corpus of tokens 0, 1, 2, … (a window is known by its first token) in moto's S3."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("corpus")
    sizes = [300, 251, 200]
    tokens = np.arange(sum(sizes), dtype=np.uint16)
    parts = np.split(tokens, np.cumsum(sizes)[:-1])
    for k, part in enumerate(parts):
        fs.pipe(f"corpus/tokens/train-{k}.bin", part.tobytes())
    fs.pipe("corpus/tokens/val-0.bin", tokens[:100].tobytes())
    fs.pipe("corpus/tokens/manifest.json", json.dumps({"splits": {
        "train": [{"bin": f"train-{k}.bin", "tokens": n} for k, n in enumerate(sizes)],
        "val": [{"bin": "val-0.bin", "tokens": 100}]}}).encode())
    try:
        yield "s3://corpus/tokens", np.array(sizes), env
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        patch.undo()
        server.stop()


def test_two_ddp_ranks_read_the_corpus_from_s3_disjoint_and_together_once_per_epoch(s3_corpus, tmp_path):
    url, sizes, env = s3_corpus
    block, batch = 16, 4
    order = Epochs(sizes, block, seed=1337, batch=batch, world=2)
    proc = subprocess.run([sys.executable, "-m", "tests.ddp_windows", url, str(tmp_path), str(order.batches)],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"windows-rank{r}.json").read_text()) for r in range(2)]
    assert all(len(rank) == order.batches * batch for rank in seen)
    assert not set(seen[0]) & set(seen[1])  # disjoint
    union = set(seen[0]) | set(seen[1])
    assert len(union) == len(all_windows(sizes, block)) - order.dropped and union <= all_windows(sizes, block)
    assert list((tmp_path / "cache").iterdir())  # streamed through the local cache


def test_token_shards_from_a_store_read_what_the_local_files_hold(s3_corpus, tmp_path):
    url, sizes, _ = s3_corpus
    shards = TokenShards(url, "train", ShardCache(tmp_path / "cache", 1 << 30))
    assert len(shards) == sizes.sum() and shards[290:310].tolist() == list(range(290, 310))
