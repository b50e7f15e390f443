"""Where corpus files live: a local folder or any fsspec URL (`s3://bucket/prefix`, `gs://…`), so that
workers on several machines share one store.

Reads stream through fsspec, with byte ranges where only part of a file is needed. A file that must
be local while it is written (a memory map, an atomic rename) is written to local scratch and uploaded
whole when complete, so a reader never sees half of it; done markers are written last. Credentials
and endpoints come from the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import fsspec
import numpy as np


def is_local(url: str | Path) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def join(url: str | Path, *parts: str) -> str:
    """`url/part/…` for a URL or a local path."""
    return "/".join([str(url).rstrip("/"), *parts])


def filesystem(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(url))


def open_file(url: str | Path, mode: str = "rb") -> IO:
    """A file object for reading (seekable: remote reads fetch byte ranges) or, locally, writing."""
    fs, path = filesystem(url)
    return fs.open(path, mode)


def exists(url: str | Path) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def size(url: str | Path) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def read_text(url: str | Path) -> str:
    with open_file(url, "rb") as fh:
        return fh.read().decode()


def write_bytes(url: str | Path, data: bytes) -> None:
    """Write a small file whole: a rename locally, one PUT (atomic in S3) remotely."""
    fs, path = filesystem(url)
    if is_local(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    else:
        fs.pipe_file(path, data)


def write_text(url: str | Path, text: str) -> None:
    write_bytes(url, text.encode())


def file_key(url: str | Path) -> str:
    """A cheap identity of a file's (or a folder's files') contents: names, sizes and modification
    times (or ETags), never a hash of the bytes."""
    fs, path = filesystem(url)
    found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    listing = sorted((name[len(path):], info.get("size"), str(info.get("mtime", info.get("ETag", info.get("LastModified")))))
                     for name, info in found.items())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def folder_sizes(url: str | Path) -> dict[str, int]:
    """Bytes under each folder directly inside `url`."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return {}
    return {Path(d).name: int(fs.du(d)) for d in sorted(fs.ls(path, detail=False)) if fs.isdir(d)}


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
    if is_local(url):
        path = Path(filesystem(url)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(local, path.with_name(path.name + ".tmp"))
        path.with_name(path.name + ".tmp").replace(path)
    else:
        fs, path = filesystem(url)
        fs.put_file(str(local), path)


def load_npy(url: str | Path) -> np.ndarray:
    """A whole .npy file in RAM (keep it to files bounded by a shard)."""
    with open_file(url) as fh:
        return np.load(fh)


def npy_rows(url: str | Path, start: int, stop: int | None, scratch: Path | None = None) -> np.ndarray:
    """Rows `start:stop` (first axis) of a C-ordered .npy file, reading nothing else: a memory map of
    the file when local; remotely, those bytes copied into `scratch` and mapped there (or into RAM
    when no scratch folder is given)."""
    with open_file(url) as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(fh)
        header = fh.tell()
        stop = shape[0] if stop is None else min(stop, shape[0])
        row_shape = shape[1:]
        per_row = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        count = max(0, stop - start)
        if count == 0:
            return np.zeros((0, *row_shape), dtype=dtype)
        if is_local(url):
            return np.memmap(filesystem(url)[1], dtype=dtype, mode="r", offset=header + start * per_row,
                             shape=(count, *row_shape))
        fh.seek(header + start * per_row)
        if scratch is None:
            return np.frombuffer(fh.read(count * per_row), dtype=dtype).reshape(count, *row_shape)
        local = Path(tempfile.mkstemp(dir=scratch, suffix=".rows")[1])
        with open(local, "wb") as out:
            _copy_bytes(fh, out, count * per_row)
        return np.memmap(local, dtype=dtype, mode="r", shape=(count, *row_shape))


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
