"""A new batch of the lines of an ended batch that did not succeed: ``Client.retry``, on the server
(the dashboard's Retry button). The rules are ``batchq.domain.resubmit``'s, shared with the client.

The input lines go over byte for byte (a line is never re-encoded); the new input file is checked
and stored like any upload, and the batch is created like any other, for the same owner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from batchq.domain import resubmit
from batchq.domain.models import Batch, Owner
from batchq.errors import InvalidRequest
from batchq.runtime import Runtime, TaskQueue
from batchq.services import batches, files


def retry_failed(rt: Runtime, queue: TaskQueue, owner: Owner, batch_id: str) -> Batch | None:
    """The new batch, or None when every line of ``batch_id`` succeeded; 400 when it has not ended or failed."""
    batch = rt.batches.get_owned(batch_id, owner)
    reason = resubmit.refusal(batch)
    if reason is not None:
        raise InvalidRequest(reason)
    done = _succeeded(rt, owner, batch.output_file_id)
    rt.files.get(batch.input_file_id, owner)
    temp = rt.files.temp_path()
    if not _copy_unfinished(rt.files.path(batch.input_file_id), temp, done):
        temp.unlink(missing_ok=True)
        return None
    retried = files.accept_upload(rt, owner, files.Upload("batch", f"{batch.id}_retry.jsonl", temp))
    new = batches.NewBatch(retried.id, batch.endpoint, batch.completion_window, resubmit.retry_metadata(batch))
    return batches.create_batch(rt, queue, owner, new)


def _succeeded(rt: Runtime, owner: Owner, output_file_id: str | None) -> set[str]:
    if output_file_id is None:
        return set()
    rt.files.get(output_file_id, owner)
    return resubmit.succeeded(row for _, row in _rows(rt.files.path(output_file_id)))


def _copy_unfinished(source: Path, target: Path, done: set[str]) -> bool:
    """Copies the lines of ``source`` whose ``custom_id`` is not in ``done``; True if it copied any."""
    wrote = False
    with open(target, "wb") as out:
        for raw, row in _rows(source):
            if str(row.get("custom_id")) not in done:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                wrote = True
    return wrote


def _rows(path: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each non-blank line of a JSONL file with its parsed object (``{}`` for a line that is not one)."""
    with open(path, "rb") as lines:
        for raw in lines:
            if raw.strip():
                yield raw, _object(raw)


def _object(raw: bytes) -> dict[str, Any]:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}
