"""`make bench-data`: how fast the training loader hands out token windows, from a local folder (what a
node's cache holds) and from a store (S3 on moto's server, through a fresh local cache), with 1, 2 and
4 DataLoader workers, at block sizes 128 and 1,024; and the time to the first batch.

    python -m bench.data [TOKENS=200000000] [FILES=4] [BATCH=8] [SECONDS=3]

Windows come in the shuffled order training uses (`Epochs`), as (x, y) int64 tensors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import fsspec
import numpy as np
from moto import server as moto_server
from torch.utils.data import DataLoader

from model.data import Epochs, ShardCache, TokenShards, WindowBatches

H100_GPT2_TOKENS_PER_S = 445_521  # gpt2 training on one H100, plain compiled PyTorch (docs/benchmarks.md)


def write_corpus(folder: Path, tokens: int, files: int) -> None:
    """`files` token files of random GPT-2 ids and their manifest."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [tokens // files] * files
    for k, n in enumerate(sizes):
        rng.integers(0, 50257, n, dtype=np.uint16).tofile(folder / f"train-{k}.bin")
    (folder / "manifest.json").write_text(json.dumps({"splits": {
        "train": [{"bin": f"train-{k}.bin", "tokens": n} for k, n in enumerate(sizes)], "val": []}}))


def measure(tokens: TokenShards, block: int, batch: int, workers: int, seconds: float) -> tuple[float, float]:
    """(seconds to the first batch, tokens/s over the next `seconds`)."""
    order = Epochs(tokens.sizes, block, seed=0, batch=batch)
    started = time.perf_counter()
    loader = iter(DataLoader(WindowBatches(tokens, order, block), batch_size=None, num_workers=workers))
    next(loader)
    first = time.perf_counter() - started
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        x, _ = next(loader)
        n += x.numel()
    rate = n / (time.perf_counter() - started)
    del loader  # its workers end
    return first, rate


def main(args: list[str]) -> None:
    opts = {k.upper(): int(v) for k, v in (a.split("=", 1) for a in args)}
    total, files, batch, seconds = (opts.get(k, d) for k, d in (("TOKENS", 200_000_000), ("FILES", 4), ("BATCH", 8),
                                                                ("SECONDS", 3)))
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on fewer cores: measured
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        write_corpus(work / "tokens", total, files)
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        fs.put(str(work / "tokens") + "/", "bench/tokens/", recursive=True)
        print(f"{total:,} tokens in {files} files ({total * 2 / 2**20:,.0f} MiB), batch {batch}, "
              f"{os.cpu_count()} cores; each figure over {seconds} s\n")
        print("| source | workers | block | first batch (s) | tokens/s | × gpt2 on one H100 |\n|---|---|---|---|---|---|")
        for source in ("local", "store"):
            for workers in (1, 2, 4):
                for block in (128, 1024):
                    cache = work / f"cache-{workers}-{block}"  # a fresh one: the store's bytes are read again
                    data = str(work / "tokens") if source == "local" else "s3://bench/tokens"
                    tokens = TokenShards(data, "train", ShardCache(cache, 1 << 40))
                    first, rate = measure(tokens, block, batch, workers, seconds)
                    print(f"| {source} | {workers} | {block:,} | {first:.2f} | {rate:,.0f} | "
                          f"{rate / H100_GPT2_TOKENS_PER_S:.1f} |", flush=True)
                    shutil.rmtree(cache, ignore_errors=True)
        print(f"\nanchor: gpt2 trains at {H100_GPT2_TOKENS_PER_S:,} tokens/s on one H100 (plain compiled PyTorch, "
              "docs/benchmarks.md); a loader at 10x that keeps one GPU fed with room to spare")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
