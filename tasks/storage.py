"""Where corpus files live: a local folder or any fsspec URL (`s3://bucket/prefix`, `gs://…`), so that
workers on several machines share one store.

Reads stream through fsspec by byte ranges: `read_ahead` bytes at a time inside the range a reader
asked for, `block_size` bytes past it, never the store client's default 50 MiB block. A file that
must be local while it is written (a memory map, an atomic rename) is written to local scratch and
uploaded whole when complete, so a reader never sees half of it; done markers are written last.
Credentials and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).

Every read and write here is retried with backoff on an error of the machine (a reset, a timeout,
503 SlowDown, a short body, a disk error), per `conf/store/`; one that persists raises StoreError
naming the file. A decoder above sees either the file's true bytes or a StoreError, so an outage is
never mistaken for damaged content.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import fsspec
import numpy as np
import yaml
from fsspec.exceptions import FSTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "store" / "default.yaml"
_settings: dict[str, Any] | None = None


class StoreError(Exception):
    """A read or write that kept failing on the machine's side (network, store, disk) after every
    retry. The work stops with no done marker and is not cached; it is never counted as bad input."""


class ShortRead(OSError):
    """The store returned fewer bytes than the range asked for, inside the file: retried."""


def machine_errors() -> tuple[type[BaseException], ...]:
    """The exception types a store client or a disk raises when the machine fails, not the content."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, asyncio.TimeoutError, FSTimeoutError]
    try:
        import aiohttp
        import botocore.exceptions

        errors += [aiohttp.ClientError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    except ImportError:  # no S3 client installed: local files only
        pass
    return tuple(errors)


# Errors that no retry mends, raised at once as StoreError: the file is gone or not ours to read.
NOT_RETRIED = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def configure(settings: dict[str, Any]) -> None:
    """Apply `conf/store/` settings in this process: our retries and reads, and the S3 client's own
    tries and timeouts (s3fs's on its class, botocore's in fsspec's defaults for every S3 filesystem)."""
    global _settings
    _settings = dict(settings)
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return
    s3 = settings["s3"]
    S3FileSystem.retries = s3["attempts"]
    fsspec.config.conf.setdefault("s3", {})["config_kwargs"] = {
        "connect_timeout": s3["connect_timeout"], "read_timeout": s3["read_timeout"],
        "retries": {"mode": "standard", "total_max_attempts": s3["botocore_attempts"]}}
    S3FileSystem.clear_instance_cache()  # a client reads them when it is made


def settings() -> dict[str, Any]:
    """The settings `configure` applied, else conf/store/default.yaml's (a test, a notebook)."""
    if _settings is None:
        configure(yaml.safe_load(DEFAULTS.read_text()))
    return _settings


def retrying(url: str | Path, action: str, fn: Callable[[], T]) -> T:
    """`fn()`, retried with exponential backoff while it fails on the machine's side; StoreError
    naming `url` once the retries are spent."""
    s = settings()
    for attempt in itertools.count():
        try:
            return fn()
        except NOT_RETRIED as err:
            raise StoreError(f"{action} {url} failed: {type(err).__name__}: {err}") from err
        except machine_errors() as err:
            if attempt >= s["retries"]:
                raise StoreError(f"{action} {url} failed {attempt + 1} times, last with "
                                 f"{type(err).__name__}: {err}") from err
            wait = min(s["backoff_s"] * 2 ** attempt, s["max_backoff_s"])
            log.warning("%s %s: %s: %s; retry %d of %d in %.1f s", action, url, type(err).__name__, err,
                        attempt + 1, s["retries"], wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def is_local(url: str | Path) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def join(url: str | Path, *parts: str) -> str:
    """`url/part/…` for a URL or a local path."""
    return "/".join([str(url).rstrip("/"), *parts])


def filesystem(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(url))


def open_file(url: str | Path, end: int | None = None) -> IO[bytes]:
    """A seekable binary reader of a file, by byte ranges with retries: `read_ahead` bytes a fetch
    before byte `end` (the end of the range the caller needs; None: the whole file), `block_size`
    bytes a fetch after it."""
    s = settings()
    return io.BufferedReader(RangeReader(url, end, s["read_ahead"], s["block_size"]), buffer_size=s["read_ahead"])


class RangeReader(io.RawIOBase):
    """The bytes of one file, each fetch a byte range of exactly the length asked for (a shorter
    answer inside the file is retried, never passed on), retried as `retrying` says."""

    def __init__(self, url: str | Path, end: int | None, read_ahead: int, block_size: int):
        self.url, self.read_ahead, self.block_size = str(url), read_ahead, block_size
        self.fs, self.path = filesystem(url)
        self.size = size(url)
        self.end = self.size if end is None else min(end, self.size)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def readall(self) -> bytes:
        parts = []
        while part := self.read(self.read_ahead):
            parts.append(part)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        limit = self.end - self.pos if self.pos < self.end else self.block_size
        n = min(len(buffer), limit, self.size - self.pos)
        if n <= 0:
            return 0
        data = retrying(self.url, "reading", lambda: self._fetch(self.pos, n))
        buffer[:n] = data
        self.pos += n
        return n

    def _fetch(self, start: int, n: int) -> bytes:
        data = self.fs.cat_file(self.path, start=start, end=start + n)
        if len(data) != n:
            raise ShortRead(f"{len(data)} of the {n} bytes at {start:,}")
        return data


def exists(url: str | Path) -> bool:
    fs, path = filesystem(url)
    return retrying(url, "looking up", lambda: fs.exists(path))


def size(url: str | Path) -> int:
    fs, path = filesystem(url)
    return int(retrying(url, "looking up", lambda: fs.size(path)))


def read_text(url: str | Path) -> str:
    with open_file(url) as fh:
        return fh.read().decode()


def write_bytes(url: str | Path, data: bytes) -> None:
    """Write a small file whole: a rename locally, one PUT (atomic in S3) remotely."""
    fs, path = filesystem(url)

    def write() -> None:
        if is_local(url):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(path + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        else:
            fs.pipe_file(path, data)

    retrying(url, "writing", write)


def write_text(url: str | Path, text: str) -> None:
    write_bytes(url, text.encode())


def file_key(url: str | Path) -> str:
    """A cheap identity of a file's (or a folder's files') contents: names, sizes and modification
    times (or ETags), never a hash of the bytes."""
    fs, path = filesystem(url)
    found = retrying(url, "listing",
                     lambda: fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)})
    listing = sorted((name[len(path):], info.get("size"), str(info.get("mtime", info.get("ETag", info.get("LastModified")))))
                     for name, info in found.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def folder_sizes(url: str | Path) -> dict[str, int]:
    """Bytes under each folder directly inside `url`."""
    fs, path = filesystem(url)
    if not exists(url):
        return {}
    return retrying(url, "listing", lambda: {Path(d).name: int(fs.du(d)) for d in sorted(fs.ls(path, detail=False))
                                             if fs.isdir(d)})


@contextmanager
def staged_folder(url: str | Path) -> Iterator[Path]:
    """A local folder to write into: `url` itself when local; else local scratch whose files are
    uploaded into `url` (beside what is there already) when the block ends without an error."""
    if is_local(url):
        path = Path(filesystem(url)[1])
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="opengpt2-stage-") as scratch:
        yield Path(scratch)
        for file in sorted(p for p in Path(scratch).rglob("*") if p.is_file()):
            put_file(file, join(url, *file.relative_to(scratch).parts))


def put_file(local: Path, url: str | Path) -> None:
    """Move a finished local file to `url`: a rename locally (a copy across file systems), one
    upload remotely."""
    fs, path = filesystem(url)

    def put() -> None:
        if is_local(url):
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(local, target.with_name(target.name + ".tmp"))
            target.with_name(target.name + ".tmp").replace(target)
        else:
            fs.put_file(str(local), path)

    retrying(url, "writing", put)


def load_npy(url: str | Path) -> np.ndarray:
    """A whole .npy file in RAM (keep it to files bounded by a shard)."""
    with open_file(url) as fh:
        return np.load(fh)


def npy_rows(url: str | Path, start: int, stop: int | None, scratch: Path | None = None) -> np.ndarray:
    """Rows `start:stop` (first axis) of a C-ordered .npy file, reading nothing else: a memory map of
    the file when local; remotely, those bytes copied into `scratch` and mapped there (or into RAM
    when no scratch folder is given)."""
    shape, dtype, header = npy_header(url)
    stop = shape[0] if stop is None else min(stop, shape[0])
    row_shape = shape[1:]
    per_row = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    count = max(0, stop - start)
    if count == 0:
        return np.zeros((0, *row_shape), dtype=dtype)
    if is_local(url):
        return np.memmap(filesystem(url)[1], dtype=dtype, mode="r", offset=header + start * per_row,
                         shape=(count, *row_shape))
    with open_file(url, end=header + stop * per_row) as fh:
        fh.seek(header + start * per_row)
        if scratch is None:
            return np.frombuffer(fh.read(count * per_row), dtype=dtype).reshape(count, *row_shape)
        local = Path(tempfile.mkstemp(dir=scratch, suffix=".rows")[1])
        with open(local, "wb") as out:
            _copy_bytes(fh, out, count * per_row)
        return np.memmap(local, dtype=dtype, mode="r", shape=(count, *row_shape))


def npy_header(url: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes before the data) of a .npy file, from its first block."""
    with open_file(url, end=0) as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(fh)
        return shape, dtype, fh.tell()


def _copy_bytes(src: IO, dst: IO, n: int, block: int = 1 << 22) -> None:
    while n > 0:
        chunk = src.read(min(block, n))
        if not chunk:
            raise EOFError("the file ended before the rows asked for")
        dst.write(chunk)
        n -= len(chunk)


def save_npy(url: str | Path, array: np.ndarray) -> None:
    """Write a .npy file whole (as `write_bytes`)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(url, buffer.getvalue())
