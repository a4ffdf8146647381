"""The results feed's cursor: where a reader of ``GET /batches/{id}/results`` stopped.

While a batch runs, its result lines are read in the order they were stored (a list in Redis);
once it ended, from its output and error files, which ``finalize`` writes in that same order
(each file keeps the lines of its kind). So one cursor serves both: how many lines of each kind
were read and how many bytes of each file they take (``data + b"\\n"`` per line, as written).
Position ``out_lines + err_lines`` in the store order is exactly the first ``out_lines`` lines
(``out_bytes`` bytes) of the output file and the first ``err_lines`` (``err_bytes``) of the error
file. Its text form is ``<out_lines>.<out_bytes>.<err_lines>.<err_bytes>``; clients treat it as
opaque.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from batchq.errors import InvalidRequest

_TEXT = re.compile(r"(\d{1,12})\.(\d{1,15})\.(\d{1,12})\.(\d{1,15})")


@dataclass(frozen=True)
class Cursor:
    out_lines: int = 0
    out_bytes: int = 0
    err_lines: int = 0
    err_bytes: int = 0

    @property
    def position(self) -> int:
        """Lines read so far: a position in the store order."""
        return self.out_lines + self.err_lines

    @property
    def text(self) -> str:
        return f"{self.out_lines}.{self.out_bytes}.{self.err_lines}.{self.err_bytes}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """The cursor a previous page handed out; none (or empty) for the start."""
        if not text:
            return cls()
        match = _TEXT.fullmatch(text)
        cursor = cls(*(int(part) for part in match.groups())) if match else None
        if cursor is None or cursor.out_bytes < cursor.out_lines or cursor.err_bytes < cursor.err_lines:
            raise InvalidRequest(f"Invalid cursor {text[:64]!r}: pass a cursor a page handed out.", param="after")
        return cursor

    def past(self, value: bytes) -> Cursor:
        """The cursor after one stored value (b"o"/b"e" + the line)."""
        size = len(value)  # the line plus its newline: one byte of prefix stands for the newline
        if value[:1] == b"o":
            return replace(self, out_lines=self.out_lines + 1, out_bytes=self.out_bytes + size)
        return replace(self, err_lines=self.err_lines + 1, err_bytes=self.err_bytes + size)


def advance(cursor: Cursor, values: list[bytes]) -> tuple[list[bytes], Cursor]:
    """The lines of stored values (prefix dropped) and the cursor after them."""
    for value in values:
        cursor = cursor.past(value)
    return [value[1:] for value in values], cursor
