"""Creating and cancelling batches: what `POST /batches`, `POST /batches/{id}/cancel` and the dashboard call."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from batchq.domain.ids import new_batch_id
from batchq.domain.models import Batch, Owner
from batchq.domain.status import Status, is_cancellable, is_terminal
from batchq.domain.windows import check_metadata, checked_window, expiry_seconds
from batchq.errors import Conflict, InvalidRequest
from batchq.runtime import Runtime, TaskQueue

log = logging.getLogger("batchq.service")


@dataclass(frozen=True)
class NewBatch:
    """A create-batch request as received (validated by ``create_batch``)."""

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: object = None
    output_expires_after: object = None


def create_batch(rt: Runtime, queue: TaskQueue, owner: Owner, request: NewBatch) -> Batch:
    s = rt.settings
    if request.endpoint not in s.endpoints:
        choices = ", ".join(s.endpoints)
        raise InvalidRequest(f"endpoint must be one of {choices}; got {request.endpoint!r}.", param="endpoint")
    seconds = checked_window(request.completion_window, s.min_completion_window, s.max_completion_window)
    meta = check_metadata(request.metadata)
    output_ttl_s = _output_ttl(request.output_expires_after)
    source = rt.files.get(request.input_file_id, owner)
    if source.purpose != "batch":
        raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id")
    if source.expires_at is not None and source.expires_at <= time.time():
        raise InvalidRequest("The input file has expired; upload it again.", param="input_file_id")
    lines = rt.files.line_count(request.input_file_id)
    rt.quotas.reserve(owner.account, lines)
    try:
        now = int(time.time())
        batch = Batch(
            id=new_batch_id(), endpoint=request.endpoint, input_file_id=request.input_file_id,
            completion_window=request.completion_window, status=Status.VALIDATING, created_at=now,
            expires_at=now + seconds, metadata=meta,
        )  # fmt: skip
        return _create(rt, queue, owner, batch, lines, output_ttl_s)
    except BaseException:
        rt.quotas.release(owner.account, lines)
        raise


def _output_ttl(policy: object) -> int | None:
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise InvalidRequest("output_expires_after must be an object.", param="output_expires_after")
    return expiry_seconds(policy.get("anchor", "created_at"), policy.get("seconds"), "output_expires_after")


def _create(rt: Runtime, queue: TaskQueue, owner: Owner, batch: Batch, lines: int, output_ttl_s: int | None) -> Batch:
    rt.batches.create(batch, owner, reserved_lines=lines, output_ttl_s=output_ttl_s)
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
