"""The manifest of a split submission: what lets ``batchq submit`` resume after it was killed.

A small JSON file next to the merged output (``<output>.batchq-manifest.json``), rewritten
atomically (a temp file of its own, fsync, rename) after every step. It records the run's settings, the
source's size and SHA-256, and per chunk its byte and line range, its file id, its batch id and
its state::

    planned ─upload─▶ uploaded ─▶ creating ─create─▶ created ─ends─▶ ended ─merged─▶ merged

``creating`` is written *before* the create is sent, so a resumed run knows a create may have
reached the server: it looks for a batch made from the chunk's file before creating one (and
sends the same ``Idempotency-Key`` when it must). ``output_bytes`` / ``errors_bytes`` are how much
of the merged files the merged chunks fill; a resumed run cuts the partial files back to them.

Only an unfinished manifest is resumed. A finished one is history: the next run moves it aside
(``archive``: ``<manifest>.<UTC time it began>-<run id>``) and starts anew. One run at a time per
output: a run holds an exclusive ``flock`` on ``<manifest>.lock`` from start to end (``locked``).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from batchq.client.errors import ClientError
from batchq.domain.models import BatchErrorItem

VERSION = 1
SUFFIX = ".batchq-manifest.json"


class ChunkState(StrEnum):
    PLANNED = "planned"
    UPLOADED = "uploaded"
    CREATING = "creating"
    CREATED = "created"
    ENDED = "ended"
    MERGED = "merged"


class ChunkRecord(BaseModel):
    index: int
    start: int  # byte range [start, end) of the source
    end: int
    first_line: int  # line number (from 1) of its first line
    lines: int
    state: ChunkState = ChunkState.PLANNED
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the batch's final status, once ended
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchErrorItem] | None = None  # why its batch failed (validation), once ended so

    def key(self, run_id: str, kind: str) -> str:
        """The chunk's ``Idempotency-Key`` for ``kind`` (file or batch): the same in every run."""
        return f"batchq-{run_id}-{self.index}-{kind}"


class Manifest(BaseModel):
    version: int = VERSION
    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: int = Field(default_factory=lambda: int(time.time()))
    source: str
    source_bytes: int
    source_sha256: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after_s: int | None = None
    output: str
    errors: str
    output_bytes: int = 0  # bytes of the merged files that merged chunks fill
    errors_bytes: int = 0
    finished: bool = False  # the merged files are in place
    chunks: list[ChunkRecord]

    def settings(self) -> tuple[str, str, dict[str, str] | None, int | None]:
        """What a resumed run must ask for again to continue this one."""
        return self.endpoint, self.completion_window, self.metadata, self.output_expires_after_s


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + SUFFIX)


def load(path: Path) -> Manifest | None:
    if not path.exists():
        return None
    return Manifest.model_validate_json(path.read_bytes())


def save(manifest: Manifest, path: Path) -> None:
    """Write atomically: a reader (or a resumed run) sees the old manifest or the new one."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as sink:
        try:
            sink.write(manifest.model_dump_json(indent=1).encode())
            sink.flush()
            os.fsync(sink.fileno())
        except BaseException:
            os.unlink(sink.name)
            raise
    os.replace(sink.name, path)


def archive(path: Path, manifest: Manifest) -> Path:
    """Move a finished run's manifest aside (kept as history); returns where it went."""
    began = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(manifest.created_at))
    moved = path.with_name(f"{path.name}.{began}-{manifest.run_id[:8]}")
    path.replace(moved)
    return moved


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path``'s run (on ``<path>.lock``); refuse if another run holds it."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClientError(f"Another batchq run is using {lock} (same --output); wait for it to end.") from None
        yield  # released when the file is closed
