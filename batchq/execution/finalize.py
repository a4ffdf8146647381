"""Finalization: turn a batch's stored result lines into its output and error files, once.

Called by the completion callback (the task that stores the last line), by the watchdog, and
after cancel or expiry. Safe to run twice or concurrently: a per-batch lock serializes runs, file
ids are derived from the batch id (a rerun rewrites the same files), and the final status change
is a compare-and-set. A finalize that stalled past its lock (which lives a line lease past its
worker's last beat) while another finished the batch puts no file in place: the files are
written to temp paths, and put in place only once Redis confirms the lock is still this run's and
the batch has not ended (``LockStore.held``); the working keys of an ended batch expire some
minutes later rather than at once, so even a run that stalls right after that check writes the
same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from batchq.domain.models import Batch, Owner
from batchq.domain.results import CANCELLED, EXPIRED, error_line
from batchq.domain.status import Status, is_terminal
from batchq.domain.webhooks import EVENT_TYPES
from batchq.runtime import Runtime, TaskQueue
from batchq.storage import clock, keys
from batchq.storage.locks import Lock, batch_lock

log = logging.getLogger("batchq.finalize")
CLAIM_CHUNK = 500


def derived_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.blake2b(f"{batch_id}:{kind}".encode(), digest_size=16).hexdigest()


def finalize(rt: Runtime, queue: TaskQueue, batch_id: str) -> None:
    key = keys.batch_lock(batch_id)
    with batch_lock(rt.batch_locks, rt.locks, key, rt.settings.line_lease_s) as lock:
        batch = rt.batches.get(batch_id) if lock else None
        if lock is None or batch is None or is_terminal(batch.status):
            return
        _advance(rt, queue, batch, lock)


def _advance(rt: Runtime, queue: TaskQueue, batch: Batch, lock: Lock) -> None:
    if batch.status is Status.CANCELLING:
        _finish_cancel(rt, queue, batch, lock)
    elif batch.expires_at is not None and time.time() >= batch.expires_at:
        _finish_expired(rt, queue, batch, lock)
    elif batch.status in (Status.IN_PROGRESS, Status.FINALIZING):
        _finish_complete(rt, queue, batch, lock)


def _finish_complete(rt: Runtime, queue: TaskQueue, batch: Batch, lock: Lock) -> None:
    counts = batch.request_counts
    if counts.completed + counts.failed < counts.total:
        return  # not done yet: the last line or the watchdog calls again
    if batch.status is Status.IN_PROGRESS and not rt.batches.move(batch.id, Status.FINALIZING):
        return
    _write_and_move(rt, queue, batch.id, Status.COMPLETED, lock)


def _finish_cancel(rt: Runtime, queue: TaskQueue, batch: Batch, lock: Lock) -> None:
    started = batch.cancelling_at or int(time.time())
    if _live_leases(rt, batch.id) and time.time() < started + rt.settings.cancel_grace_s:
        queue.finalize_batch(batch.id, countdown=1.0)  # lines in flight may finish first
        return
    claim_missing(rt, batch, *CANCELLED)
    _write_and_move(rt, queue, batch.id, Status.CANCELLED, lock)


def _finish_expired(rt: Runtime, queue: TaskQueue, batch: Batch, lock: Lock) -> None:
    claim_missing(rt, batch, *EXPIRED)
    _write_and_move(rt, queue, batch.id, Status.EXPIRED, lock)


def _live_leases(rt: Runtime, batch_id: str) -> bool:
    now = clock.now()
    return any(until > now for until in rt.batches.leases(batch_id).values())


def missing_lines(rt: Runtime, batch_id: str, total: int) -> list[int]:
    bitmap = rt.batches.done_bitmap(batch_id)
    return [i for i in range(total) if not _bit(bitmap, i)]


def claim_missing(rt: Runtime, batch: Batch, code: str, message: str) -> int:
    """Give every line without a result an error line with ``code``; returns how many."""
    missing = missing_lines(rt, batch.id, batch.request_counts.total)
    claim_lines(rt, batch, missing, code, message)
    return len(missing)


def claim_lines(rt: Runtime, batch: Batch, indices: list[int], code: str, message: str) -> None:
    """Store an error line with ``code`` for each of ``indices`` that has no result yet."""
    if not indices:
        return
    offsets = rt.batches.offsets(batch.id)
    with _input(rt, batch) as handle:
        for start in range(0, len(indices), CLAIM_CHUNK):
            chunk = indices[start : start + CLAIM_CHUNK]
            lines = [(i, error_line(_custom_id(handle, offsets[i]), code, message)) for i in chunk]
            rt.batches.complete_lines(batch.id, lines)


@contextmanager
def _input(rt: Runtime, batch: Batch) -> Iterator[BinaryIO | None]:
    """The batch's input file; None if it was removed behind batchq's back (the batch must still end)."""
    try:
        handle = open(rt.files.path(batch.input_file_id), "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        log.error("input file missing at claim", extra={"batch_id": batch.id, "file_id": batch.input_file_id})
        yield None
        return
    with handle:
        yield handle


def _custom_id(handle: BinaryIO | None, where: tuple[int, int]) -> str:
    if handle is None:
        return ""  # the input is gone: the line is still accounted for, without its id
    handle.seek(where[0])
    return str(orjson.loads(handle.read(where[1]))["custom_id"])


def _bit(bitmap: bytes, index: int) -> bool:
    byte = index >> 3
    return byte < len(bitmap) and bool(bitmap[byte] & (0x80 >> (index & 7)))


def _write_and_move(rt: Runtime, queue: TaskQueue, batch_id: str, target: Status, lock: Lock) -> None:
    record = rt.batches.bookkeeping(batch_id)
    owner = Owner.from_key(record.owner if record else "")
    try:
        written = write_files(rt, batch_id, owner, record.output_ttl_s if record else None, lock)
    except OSError as exc:  # a full disk, most often: the finalize task retries; `batchq top` and /metrics show it
        rt.batches.finalize_failed(batch_id, f"{type(exc).__name__}: {exc}", time.time())
        log.warning(
            "finalize could not write the result files; retrying", extra={"batch_id": batch_id, "reason": str(exc)}
        )
        raise
    if written is None or not rt.batch_locks.held(lock, batch_id):
        log.warning("finalize outlived its lock; another run finishes the batch", extra={"batch_id": batch_id})
        return
    output_id, error_id = written
    if record is not None and record.finalize_failed_at is not None:
        rt.batches.finalize_written(batch_id)
        log.info("finalize wrote the result files after failing", extra={"batch_id": batch_id})
    fields = {"output_file_id": output_id} | ({"error_file_id": error_id} if error_id else {})
    if rt.batches.move(batch_id, target, **fields):
        rt.batches.drop_working_keys(batch_id)
        queue.notify(batch_id, EVENT_TYPES[target])
        log.info("batch finished", extra={"batch_id": batch_id, "status": target.value})


def write_files(
    rt: Runtime, batch_id: str, owner: Owner, ttl_s: int | None, lock: Lock
) -> tuple[str, str | None] | None:
    """Stream the stored result lines into the output and error files (``ttl_s``: output_expires_after).

    Each file keeps the order the lines were stored in, so the results feed's cursor (counts and
    byte offsets into each kind) still points at the same place in the files once the batch ended.
    Both are written to temp paths first, and put in place only while ``lock`` is still held and
    the batch has not ended; None (nothing put in place) otherwise.
    """
    errors = 0
    with rt.files.writer() as (out, out_tmp), rt.files.writer() as (err, err_tmp):
        for _, value in rt.batches.iter_results(batch_id):
            errors += value[:1] == b"e"
            (out if value[:1] == b"o" else err).write(value[1:] + b"\n")
        out.close()
        err.close()
        if not rt.batch_locks.held(lock, batch_id):
            return None
        output_id = _place(rt, batch_id, owner, "output", out_tmp, ttl_s)
        return output_id, _place(rt, batch_id, owner, "error", err_tmp, ttl_s) if errors else None


def _place(rt: Runtime, batch_id: str, owner: Owner, kind: str, source: Path, ttl_s: int | None) -> str:
    file_id = derived_file_id(batch_id, kind)
    rt.files.register(file_id, owner, f"{batch_id}_{kind}.jsonl", "batch_output", source, ttl_s=ttl_s)
    return file_id
