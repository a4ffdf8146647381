"""The operations behind the API and the CLI: create and cancel batches, accept uploads."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from batchq.domain.ids import new_batch_id, new_file_id
from batchq.domain.models import Batch, DeletedFile, FileObject, Owner
from batchq.domain.status import Status, is_cancellable, is_terminal
from batchq.domain.validation import upload_problem
from batchq.domain.windows import check_metadata, checked_window
from batchq.errors import Conflict, InvalidRequest
from batchq.runtime import Runtime, TaskQueue
from batchq.storage.files import input_shape

UPLOAD_PURPOSES = ("batch",)
log = logging.getLogger("batchq.service")


def accept_upload(rt: Runtime, owner: Owner, purpose: str | None, filename: str, temp: Path) -> FileObject:
    if purpose not in UPLOAD_PURPOSES:
        temp.unlink(missing_ok=True)
        raise InvalidRequest(f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}; got {purpose!r}.", param="purpose")
    lines = _checked_input(rt, temp) if purpose == "batch" else 0
    stored = rt.files.register(new_file_id(), owner, filename, purpose, temp, lines)
    log.info("file uploaded", extra={"file_id": stored.id, "owner": owner.key, "bytes": stored.bytes})
    return stored


def _checked_input(rt: Runtime, temp: Path) -> int:
    """The line count of a batch input file, or 400 (and the upload dropped) if it can never run."""
    s = rt.settings
    shape = input_shape(temp, s.max_line_bytes)
    problem = upload_problem(shape.head, shape.lines, s.max_lines, s.max_line_bytes)
    if problem is not None:
        temp.unlink(missing_ok=True)
        code, message = problem
        raise InvalidRequest(message, param="file", code=code)
    return shape.lines


def delete_file(rt: Runtime, owner: Owner, file_id: str) -> DeletedFile:
    """Delete a file, unless an unfinished batch still reads it (its lines would be lost)."""
    rt.files.get(file_id, owner)
    user = rt.batches.active_using(file_id)
    if user is not None:
        raise Conflict(f"File '{file_id}' is the input of batch '{user}', which has not finished.", param="file_id")
    return rt.files.delete(file_id, owner)


def create_batch(
    rt: Runtime, queue: TaskQueue, owner: Owner, input_file_id: str, endpoint: str,
    completion_window: str, metadata: object,
) -> Batch:  # fmt: skip
    s = rt.settings
    if endpoint not in s.endpoints:
        raise InvalidRequest(f"endpoint must be one of {', '.join(s.endpoints)}; got {endpoint!r}.", param="endpoint")
    seconds = checked_window(completion_window, s.min_completion_window, s.max_completion_window)
    meta = check_metadata(metadata)
    source = rt.files.get(input_file_id, owner)
    if source.purpose != "batch":
        raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id")
    lines = rt.files.line_count(input_file_id)
    rt.quotas.reserve(owner.account, lines)
    try:
        return _create(rt, queue, owner, input_file_id, endpoint, completion_window, seconds, meta, lines)
    except BaseException:
        rt.quotas.release(owner.account, lines)
        raise


def _create(
    rt: Runtime, queue: TaskQueue, owner: Owner, input_file_id: str, endpoint: str,
    completion_window: str, seconds: int, meta: dict[str, str] | None, lines: int,
) -> Batch:  # fmt: skip
    now = int(time.time())
    batch = Batch(
        id=new_batch_id(), endpoint=endpoint, input_file_id=input_file_id, completion_window=completion_window,
        status=Status.VALIDATING, created_at=now, expires_at=now + seconds, metadata=meta,
    )  # fmt: skip
    rt.batches.create(batch, owner, reserved_lines=lines)
    queue.submit_batch(batch.id)
    log.info("batch created", extra={"batch_id": batch.id, "owner": owner.key, "lines": lines})
    return batch


def cancel_batch(rt: Runtime, queue: TaskQueue, owner: Owner, batch_id: str) -> Batch:
    batch = rt.batches.get_owned(batch_id, owner)
    if batch.status in (Status.CANCELLING, Status.CANCELLED):
        return batch  # cancelling twice is harmless
    if is_terminal(batch.status) or not is_cancellable(batch.status):
        raise Conflict(f"Cannot cancel a batch with status '{batch.status.value}'.", param="batch_id")
    if rt.batches.move(batch_id, Status.CANCELLING):
        queue.finalize_batch(batch_id)
        log.info("batch cancelling", extra={"batch_id": batch_id, "owner": owner.key})
    return rt.batches.get_owned(batch_id, owner)
