"""Splitting a JSONL input into chunks that each fit one batch (``batchq submit``, ``Client.submit_many``).

One streaming pass over the file (a line at a time: never the whole file in memory) yields byte
ranges: each holds at most ``max_lines`` requests and ``max_bytes`` bytes, and ends after a whole
line. The same pass validates every line as the server does (``batchq.domain.validation``: JSON
object, ``custom_id``, ``method``, ``url`` equal to the endpoint, ``body``, no line over the size
limit, blank lines only at the end, and no ``custom_id`` twice in the *whole* file, across
chunks); any error refuses the file before anything is sent, listing lines as the server does.
Memory: one 16-byte digest per ``custom_id``. Trailing blank lines belong to no chunk (the last
chunk ends after the last request), so they never push it over ``max_bytes``. The pass also
computes the file's SHA-256, which a resumed run compares with its manifest.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batchq.client.errors import ClientError
from batchq.domain.models import BatchErrorItem
from batchq.domain.validation import InputValidator

SHOWN_ERRORS = 20  # errors listed in a refusal (the count says how many there were)


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


@dataclass(frozen=True)
class SplitLimits:
    max_lines: int  # requests per chunk
    max_bytes: int  # bytes per chunk
    max_line_bytes: int  # bytes per line (without its newline)


@dataclass
class _Cutter:
    """Cuts request lines into chunks; blank lines are not part of any chunk."""

    limits: SplitLimits
    chunks: list[Chunk]
    start: int = 0
    first_line: int = 1
    lines: int = 0
    end: int = 0  # after the last request line taken

    def take(self, line_no: int, offset: int, size: int) -> None:
        full = self.lines >= self.limits.max_lines or offset + size - self.start > self.limits.max_bytes
        if self.lines and full:
            self.close()
        if not self.lines:
            self.start, self.first_line = offset, line_no
        self.lines, self.end = self.lines + 1, offset + size

    def close(self) -> None:
        if self.lines:
            self.chunks.append(Chunk(self.start, self.end, self.first_line, self.lines))
            self.lines = 0


def plan_chunks(path: str | os.PathLike[str], endpoint: str, limits: SplitLimits) -> Plan:
    """Validate ``path`` for ``endpoint`` and cut it into chunks within ``limits``; refuse a bad file."""
    validator = InputValidator(endpoint, sys.maxsize, limits.max_line_bytes)
    cutter, digest, total = _Cutter(limits, []), hashlib.sha256(), 0
    with open(path, "rb") as source:
        for line_no, offset, head, size in _lines(source, limits.max_line_bytes, digest.update):
            validator.feed(line_no, head)
            if head.strip():
                cutter.take(line_no, offset, size)
            total = offset + size
    cutter.close()
    report = validator.finish()
    if report.error_count:
        raise ClientError(refusal(path, report.errors, report.error_count))
    return Plan(cutter.chunks, total, digest.hexdigest())


def refusal(path: str | os.PathLike[str], errors: list[BatchErrorItem], count: int) -> str:
    """Why a file is refused, one line per error as the server lists a failed batch's errors."""
    listed = [f"line {e.line}: {e.code}: {e.message}" for e in errors[:SHOWN_ERRORS]]
    more = [f"... and {count - len(listed)} more"] if count > len(listed) else []
    head = f"{path} would fail validation ({count} error{'s' if count > 1 else ''}); nothing was sent:"
    return "\n".join([head, *listed, *more])


def _lines(
    source: IO[bytes], max_line_bytes: int, seen: Callable[[bytes], object]
) -> Iterator[tuple[int, int, bytes, int]]:
    """(line number from 1, byte offset, the line without its newline, its size with it), streamed.

    A line longer than ``max_line_bytes`` is read in pieces (never held whole): its ``head`` is its
    first ``max_line_bytes + 2`` bytes, enough for the validator to refuse it.
    """
    offset, line_no, cap = 0, 0, max_line_bytes + 2
    while piece := source.readline(cap):
        line_no, size = line_no + 1, len(piece)
        seen(piece)
        head = piece.rstrip(b"\r\n")
        while len(piece) == cap and not piece.endswith(b"\n") and (piece := source.readline(cap)):
            seen(piece)
            size += len(piece)
        yield line_no, offset, head, size
        offset += size


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

    def lines(self) -> Iterator[bytes]:
        """The range's lines, one at a time (a line is never read past ``end``)."""
        while (left := self.end - self._file.tell()) > 0 and (line := self._file.readline(left)):
            yield line

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
