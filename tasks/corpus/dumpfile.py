"""One Pushshift dump as a stream of bytes, whatever its compression: the format is decided by the
file's first bytes (a name can lie), and a damaged zstd frame costs only what is in it.

zstd input is fed to the decompressor in small pieces, so everything decoded before the damage has
already been passed on when the error comes; reading then goes on at the next frame's magic number.
Pushshift's large dumps are one long frame each: there, everything before the damage is kept and the
rest is reported lost.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from tasks import storage
from tasks.errors import MissingInput, UserError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC = ((ZSTD_MAGIC, "zst"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"), (b"\x1f\x8b", "gz"))


class BadDump(UserError):
    """A dump that cannot be read at all: empty, or neither compressed nor JSON lines."""


def dump_format(path: Path) -> str:
    """`zst`, `xz`, `bz2`, `gz` or `ndjson`, from the first bytes; BadDump when it is none of them,
    MissingInput (a wrong setting, never skipped) when there is no such file."""
    if not path.is_file():
        raise MissingInput(f"dump {path} does not exist: check corpus.dumps")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise BadDump(f"dump {path} is empty")
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    if head.lstrip()[:1] in (b"{", b""):
        return "ndjson"
    raise BadDump(f"dump {path} is not a dump: it starts with {head[:8]!r}, which is neither zstd, xz, bz2, "
                  "gzip nor JSON lines")


@dataclass
class Damage:
    """A damaged zstd frame: where the error was found, and how many bytes were skipped to the next
    frame (`next_frame` None: to the end of the file)."""

    offset: int
    skipped: int
    next_frame: int | None


class ZstdReader(io.RawIOBase):
    """Streams a (multi-frame) zstd file; records each damaged frame in `damage` and goes on at the
    next frame; raises EOFError when the file ends mid-frame (zstandard reports that as a clean end)."""

    PIECE = 1 << 14  # compressed bytes per decompress call: at most this much output is lost with an error

    def __init__(self, raw: BinaryIO):
        self.raw, self.pending, self.buffer = raw, b"", b""
        self.position = 0  # compressed bytes handed to the decompressor or skipped
        self.frame, self.in_frame = self._new_frame(), False
        self.damage: list[Damage] = []

    @staticmethod
    def _new_frame():
        # Pushshift's dumps are written with a 2 GiB window; the library's default refuses them.
        return zstandard.ZstdDecompressor(max_window_size=2**31).decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            if not self.buffer:
                self.buffer = self.raw.read(1 << 20)
                if not self.buffer:
                    if self.in_frame and not self.frame.eof:
                        raise EOFError(f"the zstd stream ends in the middle of a frame, at byte {self.position}")
                    return 0
            piece, self.buffer = self.buffer[:self.PIECE], self.buffer[self.PIECE:]
            self.pending = self._feed(piece)
        n = min(len(buffer), len(self.pending))
        buffer[:n], self.pending = self.pending[:n], self.pending[n:]
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            if self.frame.eof:
                self.frame, self.in_frame = self._new_frame(), False
            start = self.position
            try:
                out.append(self.frame.decompress(data))
            except zstandard.ZstdError:
                self._skip_to_next_frame(start, data)
                out.append(b"\n")  # end the line cut by the damage: it must not swallow the next frame's first
                break
            self.in_frame = True
            rest = self.frame.unused_data if self.frame.eof else b""
            self.position += len(data) - len(rest)
            data = rest
        return b"".join(out)

    def _skip_to_next_frame(self, start: int, data: bytes) -> None:
        """Drop bytes from the damaged piece on until the next zstd magic number (or the end)."""
        rest, rest_start = data[1:] + self.buffer, start + 1
        self.buffer = b""
        while (found := rest.find(ZSTD_MAGIC)) < 0:
            more = self.raw.read(1 << 20)
            if not more:
                self.position = rest_start + len(rest)
                self.damage.append(Damage(start, self.position - start, None))
                break
            keep = rest[-3:]  # a magic number may straddle two reads
            rest_start, rest = rest_start + len(rest) - len(keep), keep + more
        else:
            self.position, self.buffer = rest_start + found, rest[found:]
            self.damage.append(Damage(start, self.position - start, self.position))
        self.frame, self.in_frame = self._new_frame(), False

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_dump(path: Path, fmt: str) -> BinaryIO:
    """A byte stream of the dump's JSON lines (`fmt` from `dump_format`). Its bytes are read through
    `storage`, so a failing disk or store raises StoreError, and any other error while decoding is
    damage in the file."""
    raw = storage.open_file(path)
    if fmt == "zst":
        return io.BufferedReader(ZstdReader(raw), buffer_size=1 << 20)
    opener = {"xz": lzma.open, "bz2": bz2.open, "gz": gzip.open}.get(fmt)
    return opener(raw) if opener else raw
