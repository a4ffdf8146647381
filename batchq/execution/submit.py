"""Submission: validate the input file line by line, then hand one task per line to the queue."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from batchq.domain.models import Batch, BatchErrors
from batchq.domain.routing import batch_route
from batchq.domain.status import Status
from batchq.domain.validation import InputValidator, Report
from batchq.domain.webhooks import EVENT_TYPES
from batchq.runtime import Runtime, TaskQueue
from batchq.storage import keys
from batchq.storage.batches import pack_offsets
from batchq.storage.locks import batch_lock

log = logging.getLogger("batchq.submit")


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, raw line without its newline), streamed."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, offset, raw.rstrip(b"\r\n")
            offset += len(raw)


def validate(rt: Runtime, batch: Batch) -> tuple[Report, list[tuple[int, int]]]:
    s = rt.settings
    validator = InputValidator(batch.endpoint, s.max_lines, s.max_line_bytes, s.max_validation_errors)
    offsets: list[tuple[int, int]] = []
    for number, offset, raw in iter_lines(rt.files.path(batch.input_file_id)):
        if validator.feed(number, raw) is not None and validator.ok:
            offsets.append((offset, len(raw)))
    return validator.finish(), offsets


def submit(rt: Runtime, queue: TaskQueue, batch_id: str) -> None:
    key = keys.batch_submitting(batch_id)
    with batch_lock(rt.batch_locks, rt.locks, key, rt.settings.line_lease_s) as lock:  # a second leaves it to the first
        if lock is not None:
            _submit(rt, queue, batch_id)


def _submit(rt: Runtime, queue: TaskQueue, batch_id: str) -> None:
    batch = rt.batches.get(batch_id)
    if batch is None or batch.status is not Status.VALIDATING:
        return  # already submitted (a redelivered message), cancelled or gone
    report, offsets = validate(rt, batch)
    if report.error_count:
        errors = BatchErrors(data=report.errors)
        if rt.batches.move(batch_id, Status.FAILED, errors=errors):
            queue.notify(batch_id, EVENT_TYPES[Status.FAILED])
        log.info("batch failed validation", extra={"batch_id": batch_id, "errors": report.error_count})
        return
    rt.batches.save_offsets(batch_id, pack_offsets(offsets))
    extra = {"model": report.model} if report.model else {}
    extra["route"] = batch_route(rt.settings.routes(), batch.endpoint, report.models)
    if rt.batches.move(batch_id, Status.IN_PROGRESS, total=len(offsets), **extra):
        queue.dispatch_batch(batch_id, [(i, o, n) for i, (o, n) in enumerate(offsets)])
        log.info("batch dispatched", extra={"batch_id": batch_id, "lines": len(offsets)})
