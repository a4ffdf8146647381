"""Splitting a JSONL input into chunks that each fit one batch (``batchq submit``, ``Client.submit_many``).

One streaming pass over the file (a line at a time: never the whole file in memory) yields byte
ranges: each holds at most ``max_lines`` requests and ``max_bytes`` bytes, and ends after a whole
line. Blank lines are allowed only at the end of the file, as in one batch; they join the last
chunk. The same pass computes the file's SHA-256, which a resumed run compares with its manifest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from batchq.client import ClientError


@dataclass(frozen=True)
class Chunk:
    start: int  # byte offset of its first line
    end: int  # byte offset after its last line
    first_line: int  # line number (from 1) of its first line in the source
    lines: int  # requests in it


@dataclass(frozen=True)
class Plan:
    chunks: list[Chunk]
    size: int
    sha256: str


@dataclass
class _Open:
    """The chunk being filled."""

    start: int = 0
    first_line: int = 1
    lines: int = 0


def plan_chunks(path: str | os.PathLike[str], max_lines: int, max_bytes: int, max_line_bytes: int) -> Plan:
    """Cut ``path`` into chunks of at most ``max_lines`` requests and ``max_bytes`` bytes."""
    chunks: list[Chunk] = []
    digest, current, offset, line_no, blank_at = hashlib.sha256(), _Open(), 0, 0, 0
    with open(path, "rb") as source:
        while line := source.readline(max_line_bytes + 2):
            line_no += 1
            digest.update(line)
            if not line.strip():
                blank_at = blank_at or line_no
                offset += len(line)
                continue
            _check_line(line, line_no, max_line_bytes, blank_at)
            if current.lines and (current.lines >= max_lines or offset + len(line) - current.start > max_bytes):
                chunks.append(Chunk(current.start, offset, current.first_line, current.lines))
                current = _Open(offset, line_no)
            current.lines += 1
            offset += len(line)
    if current.lines:
        chunks.append(Chunk(current.start, offset, current.first_line, current.lines))
    if not chunks:
        raise ClientError(f"{path} holds no requests.")
    return Plan(chunks, offset, digest.hexdigest())


def _check_line(line: bytes, line_no: int, max_line_bytes: int, blank_at: int) -> None:
    if blank_at:
        raise ClientError(f"Line {blank_at} is empty; only trailing lines may be blank.")
    if len(line.rstrip(b"\r\n")) > max_line_bytes:
        raise ClientError(f"Line {line_no} is longer than the server's {max_line_bytes} bytes per line.")


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ByteRange:
    """A read-only, seekable view of ``[start, end)`` of a file: what one chunk uploads.

    It has no ``fileno`` on purpose, so an HTTP client measures it by seeking, not by the whole
    file's size.
    """

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed by close())
        self.start, self.end = start, end
        self._file.seek(start)

    def read(self, size: int = -1) -> bytes:
        left = self.end - self._file.tell()
        if left <= 0:
            return b""
        return self._file.read(left if size < 0 else min(size, left))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: self.start, os.SEEK_CUR: self._file.tell(), os.SEEK_END: self.end}[whence]
        self._file.seek(min(self.end, max(self.start, base + offset)))
        return self.tell()

    def tell(self) -> int:
        return self._file.tell() - self.start

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ByteRange:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
