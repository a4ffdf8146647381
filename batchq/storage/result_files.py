"""Reading result lines from a finished batch's output or error file, from a byte offset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from batchq.errors import InvalidRequest


@dataclass
class Budget:
    """What a page may still take: lines, and bytes once it holds a line."""

    lines: int
    bytes: int

    def allows(self, size: int, taken: int) -> bool:
        return self.lines > 0 and (taken == 0 or size <= self.bytes)

    def take(self, size: int) -> None:
        self.lines -= 1
        self.bytes -= size


@dataclass(frozen=True)
class LinesRead:
    lines: list[bytes]  # without their newlines
    end: int  # the byte offset after the last line read
    at_eof: bool


def read_lines(path: Path | None, offset: int, budget: Budget, taken: int = 0) -> LinesRead:
    """Whole lines from ``offset`` while ``budget`` allows; a missing file (none, or deleted) reads as empty.

    ``offset`` must be 0 or just after a newline (what a cursor handed out points at).
    """
    try:
        handle = open(path, "rb") if path is not None else None  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        handle = None
    if handle is None:
        return LinesRead([], offset, True)
    with handle:
        _check_offset(handle, offset)
        lines: list[bytes] = []
        while True:
            line = handle.readline()
            if not line or not budget.allows(len(line), taken + len(lines)):
                return LinesRead(lines, offset, not line)
            budget.take(len(line))
            lines.append(line.rstrip(b"\n"))
            offset += len(line)


def _check_offset(handle: BinaryIO, offset: int) -> None:
    if offset == 0:
        return
    handle.seek(offset - 1)
    if handle.read(1) != b"\n":
        raise InvalidRequest("Invalid cursor: it does not point at a line of this batch's results.", param="after")
