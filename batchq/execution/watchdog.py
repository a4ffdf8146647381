"""The watchdog: finds batches that would otherwise stay unfinished, and moves them on.

One sweep runs every ``BATCHQ_WATCHDOG_INTERVAL_S`` on whichever worker holds the sweep lock.
Per active batch it decides (``plan``, pure) and then acts:

- past ``expires_at`` or ``cancelling``            -> finalize (expire / cancel with partial results)
- ``in_progress`` with every line done             -> finalize (a completion callback that never ran)
- ``finalizing`` with no progress for a lease       -> finalize again (idempotent)
- ``validating`` for longer than a lease            -> submit again (idempotent)
- lines whose worker lease ran out (worker killed)  -> re-enqueue them, or past the requeue budget,
                                                       record them as ``request_lost``
- nothing leased, queue empty, no progress          -> re-enqueue every unfinished line that was
                                                       dispatched, and let the next window of
                                                       waiting lines into the queue
- nothing leased, no progress, lines still waiting  -> let the next window into the queue (its
  in Redis, none of its tasks left in the queue        tasks were lost), not while its tasks
                                                       only wait behind other batches' tasks
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from batchq.domain.models import Batch
from batchq.domain.results import LOST
from batchq.domain.status import Status, is_terminal
from batchq.execution.finalize import claim_lines, missing_lines
from batchq.runtime import Runtime, TaskQueue
from batchq.storage import keys

log = logging.getLogger("batchq.watchdog")


@dataclass(frozen=True)
class Facts:
    batch: Batch
    now: float
    expired_leases: list[int]
    live_leases: int
    progress_at: float
    queue_empty: bool
    pending: int = 0  # line tasks waiting in Redis to enter the queue (the dispatch window)
    queued: int = 0  # the batch's tasks in the queue, by its own count


def plan(f: Facts, lease_s: float) -> str:
    """What to do with one active batch: finalize | submit | requeue_expired | requeue_all | top_up | wait."""
    b = f.batch
    counts = b.request_counts
    if b.status is Status.CANCELLING or (b.expires_at is not None and f.now >= b.expires_at):
        return "finalize"
    if b.status is Status.VALIDATING:
        return "submit" if f.now - b.created_at > lease_s else "wait"
    if b.status is Status.FINALIZING or counts.completed + counts.failed >= counts.total:
        return "finalize" if b.status is Status.IN_PROGRESS or f.now - f.progress_at > lease_s else "wait"
    if f.expired_leases:
        return "requeue_expired"
    if f.live_leases or f.now - f.progress_at <= lease_s:
        return "wait"
    if f.queue_empty:
        return "requeue_all"
    return "top_up" if f.pending and f.queued <= 0 else "wait"  # its window is lost, not just queued


def sweep(rt: Runtime, queue: TaskQueue, queue_length: int) -> None:
    deleted = rt.files.delete_expired(keep=set(rt.batches.active_inputs().values()))
    if deleted:
        log.info("expired files deleted", extra={"count": deleted})
    for batch_id in rt.batches.active_ids():
        try:
            check(rt, queue, batch_id, queue_length)
        except Exception:  # one broken batch must not stop the sweep of the others
            log.exception("watchdog failed on a batch", extra={"batch_id": batch_id})


def check(rt: Runtime, queue: TaskQueue, batch_id: str, queue_length: int) -> None:
    batch = rt.batches.get(batch_id)
    if batch is None or is_terminal(batch.status):
        rt.redis.srem(keys.ACTIVE_BATCHES, batch_id)
        return
    facts = _facts(rt, batch, queue_length)
    action = plan(facts, rt.settings.line_lease_s)
    if action != "wait":
        log.info("watchdog acts", extra={"batch_id": batch_id, "action": action})
    _act(rt, queue, batch, action, facts)


def _facts(rt: Runtime, batch: Batch, queue_length: int) -> Facts:
    now = time.time()
    leases = rt.batches.leases(batch.id)
    progress = rt.batches.field(batch.id, "progress_at")
    last = float(progress) if progress else float(batch.in_progress_at or batch.created_at)
    expired = sorted(i for i, until in leases.items() if until <= now)
    pending = rt.batches.pending(batch.id)
    queued = min(rt.batches.queued(batch.id), queue_length)  # tasks lost uncounted cannot be in the queue
    return Facts(batch, now, expired, len(leases) - len(expired), last, queue_length == 0, pending, queued)


def _act(rt: Runtime, queue: TaskQueue, batch: Batch, action: str, facts: Facts) -> None:
    if action == "finalize":
        queue.finalize_batch(batch.id)
    elif action == "submit":
        queue.submit_batch(batch.id)
    elif action == "requeue_expired":
        requeue(rt, queue, batch, facts.expired_leases)
    elif action == "requeue_all":
        rt.batches.set_fields(batch.id, queued=0)  # the queue is empty: none of its tasks are in it
        dispatched = batch.request_counts.total - facts.pending
        requeue(rt, queue, batch, missing_lines(rt, batch.id, dispatched))
        rt.batches.release_pending(batch.id, rt.settings.dispatch_window)
    elif action == "top_up":
        rt.batches.release_pending(batch.id, rt.settings.dispatch_window)
        rt.batches.set_fields(batch.id, progress_at=int(time.time()))  # one window per lease period


def requeue(rt: Runtime, queue: TaskQueue, batch: Batch, indices: list[int]) -> None:
    """Send lost lines again; a line lost more than ``max_requeues`` times becomes an error line."""
    offsets = rt.batches.offsets(batch.id)
    again: list[tuple[int, int, int]] = []
    lost = []
    for index in indices:
        rt.batches.drop_lease(batch.id, index)
        if rt.batches.count_requeue(batch.id, index) > rt.settings.max_requeues:
            lost.append(index)
        else:
            again.append((index, *offsets[index]))
    if again:
        rt.batches.add_queued(batch.id, len(again))
        queue.requeue_lines(batch.id, again)
    if lost:
        claim_lines(rt, batch, lost, *LOST)
        rt.batches.release_pending(batch.id, len(lost))  # each line given up on lets the next one in
    rt.batches.set_fields(batch.id, progress_at=int(time.time()))
