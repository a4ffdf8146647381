"""The cursor file of ``batchq results --cursor-file``: where a follower that was stopped goes on from.

Each page is printed in three steps, and a kill may fall between any two:

1. the cursor file records the page about to be printed (``pending``): the cursor before it, the
   cursor after it, and where the output ends before and after it (when the output is a regular
   file: its device, inode and size);
2. the page is written to the output and flushed;
3. the cursor file records the cursor after the page (one line: that cursor).

Each record replaces the file atomically (a temp file of its own, then a rename), so the file
always holds one whole record. A run that finds a ``pending`` record looks at its own output:

- the same regular file, ending where the page ends: the page was printed whole; go on after it;
- the same regular file, ending where the page begins: nothing of it was printed; go on before it;
- anything else (a pipe or a terminal, another file, part of the page): the page is printed again.

So with the output appended to a regular file (``>> results.jsonl``) each line is printed
exactly once across kills; on a pipe or a terminal, at least once: a kill between steps 1 and 3
prints that one page again in the next run (and the run says so).
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PENDING = "pending"


@dataclass(frozen=True)
class Place:
    """Where an output ends: a regular file's device, inode and size (None for a pipe or terminal)."""

    device: int
    inode: int
    size: int

    @classmethod
    def of(cls, fd: int | None) -> Place | None:
        if fd is None:
            return None
        found = os.fstat(fd)
        return cls(found.st_dev, found.st_ino, found.st_size) if stat.S_ISREG(found.st_mode) else None

    def moved(self, size: int) -> Place:
        return Place(self.device, self.inode, size)


@dataclass(frozen=True)
class Resume:
    cursor: str | None  # where to go on from (None: the start)
    again: bool  # the last page printed before the stop may be printed again


class CursorFile:
    """The cursor file at ``path`` for a follower that prints to the file descriptor ``out``
    (None: an output without one, which is treated as a pipe)."""

    def __init__(self, path: Path, out: int | None) -> None:
        self.path, self.out = path, out

    def resume(self) -> Resume:
        """Where the follower goes on from, given the file and the output as they are now."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        before = (lines[0].strip() if lines else "") or None
        record = lines[1].split() if len(lines) > 1 else []
        if not record or record[0] != PENDING:
            return Resume(before, False)
        ends = [Place(*map(int, record[i : i + 3])) for i in (2, 5)] if len(record) == 8 else []
        now = Place.of(self.out)
        if ends and now == ends[1]:
            return Resume(record[1], False)  # the page is there whole
        return Resume(before, not ends or now != ends[0])  # nothing of it is there, or we cannot tell

    def printing(self, before: str | None, after: str, size: int) -> None:
        """Step 1: the page of ``size`` bytes from ``before`` to ``after`` is about to be printed."""
        place = Place.of(self.out)
        ends = f" {_place(place)} {_place(place.moved(place.size + size))}" if place else ""
        self._write(f"{before or ''}\n{PENDING} {after}{ends}\n")

    def printed(self, cursor: str) -> None:
        """Step 3: every line up to ``cursor`` is printed."""
        self._write(cursor + "\n")

    def _write(self, text: str) -> None:
        folder, name = self.path.parent, self.path.name
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{name}.", suffix=".tmp", delete=False) as sink:
            sink.write(text)
        os.replace(sink.name, self.path)


def fileno(stream: IO[Any]) -> int | None:
    """``stream``'s file descriptor; None when it has none (a test's in-memory stream)."""
    try:
        return stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _place(place: Place) -> str:
    return f"{place.device} {place.inode} {place.size}"
