"""``GET /batches/{id}/results``: the result lines stored so far, from a cursor (``batchq.domain.feed``).

While the batch runs, lines come from Redis in the order they were stored; once it ended (its
working keys are dropped at the end), from its output file and then its error file, which were
written in that order. Either way a reader that passes back each page's cursor gets every line
exactly once, whenever it reconnects. A page holds at most ``limit`` lines and, beyond its first
line, at most ``MAX_PAGE_BYTES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchq.domain.feed import Cursor, advance
from batchq.domain.models import Batch, Owner
from batchq.domain.status import Status, is_terminal
from batchq.errors import InvalidRequest
from batchq.runtime import Runtime
from batchq.storage.result_files import Budget, LinesRead, read_lines

MAX_PAGE_BYTES = 8 << 20
MAX_PAGE_LINES = 10_000


@dataclass(frozen=True)
class ResultsPage:
    lines: list[bytes]  # result lines, without newlines
    cursor: Cursor  # where the next page starts
    status: Status  # the batch's status when the page was read
    has_more: bool  # more lines are stored already: ask again at once

    @property
    def ended(self) -> bool:
        """The batch has ended and this page holds its last lines: a follower stops here."""
        return is_terminal(self.status) and not self.has_more

    def body(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)


def read_results(rt: Runtime, owner: Owner, batch_id: str, cursor: Cursor, limit: int) -> ResultsPage:
    """The page after ``cursor`` of an owned batch's results (404 for anyone else's)."""
    batch = rt.batches.get_owned(batch_id, owner)
    if not is_terminal(batch.status):
        stored = rt.batches.stored_results(batch_id, cursor.position, limit, MAX_PAGE_BYTES)
        if stored.status is not None and not is_terminal(stored.status):
            if cursor.position > stored.stored:
                raise InvalidRequest("Invalid cursor: it is past the lines stored so far.", param="after")
            lines, after = advance(cursor, stored.values)
            return ResultsPage(lines, after, stored.status, stored.stored > after.position)
        batch = rt.batches.get_owned(batch_id, owner)  # it ended meanwhile: its files are written
    return _from_files(rt, batch, cursor, limit)


def _from_files(rt: Runtime, batch: Batch, cursor: Cursor, limit: int) -> ResultsPage:
    """The output file's lines after the cursor, then the error file's."""
    budget = Budget(limit, MAX_PAGE_BYTES)
    out = read_lines(_path(rt, batch.output_file_id), cursor.out_bytes, budget)
    err = LinesRead([], cursor.err_bytes, at_eof=False)  # its turn comes once the output file is read
    if out.at_eof:
        err = read_lines(_path(rt, batch.error_file_id), cursor.err_bytes, budget, taken=len(out.lines))
    after = Cursor(cursor.out_lines + len(out.lines), out.end, cursor.err_lines + len(err.lines), err.end)
    return ResultsPage(out.lines + err.lines, after, batch.status, not err.at_eof)


def _path(rt: Runtime, file_id: str | None) -> Path | None:
    return rt.files.path(file_id) if file_id else None
