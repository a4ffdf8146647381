"""The watchdog: finds batches that would otherwise stay unfinished, and moves them on.

One sweep runs every ``BATCHQ_WATCHDOG_INTERVAL_S`` on whichever worker holds the sweep lock.
Per active batch it decides (``plan``, pure) and then acts:

- past ``expires_at`` or ``cancelling``            -> finalize (expire / cancel with partial results)
- ``in_progress`` with every line done             -> finalize (a completion callback that never ran)
- a submit or a finalize running (its lock held     -> wait
  by a worker that beats)
- ``finalizing``, none running, no progress for a   -> finalize again (idempotent)
  lease (its worker died), or for ``STEP_S``
- a finalize that could not write its files lately  -> wait: its task retries (a full disk)
- ``validating``, none running, for ``STEP_S``      -> submit again (idempotent; after a Redis
                                                       restart at once, ``reconcile_once``)
- lines whose lease ran out (their worker stopped   -> re-enqueue them, or past the requeue budget,
  beating: killed, or cut off from Redis)              record them as ``request_lost``
- nothing leased, nothing waiting to be granted,    -> re-enqueue every unfinished line that is not
  none of its tasks in the line queue, no progress     in the line queue (its task was lost)
  for a lease

Files (and upload parts) on disk without a record in Redis (lost with Redis, or a crash between
writing and recording) are removed once older than ``BATCHQ_ORPHAN_GRACE_S``; this look runs at
most every ten minutes. Nothing is deleted (orphans, expired files and uploads) while Redis and the
data directory carry different deployment ids (``batchq.domain.identity``).

Every sweep also deletes expired files, expires uploads past their hour (removing their parts),
and makes sure each running batch with waiting lines is known to the scheduler
(state lost with a Redis restart, a crash in the middle of dispatching) and tops the line queue
up, so the queue refills even when no task is being delivered.

After a Redis restart (``batchq.execution.recovery``), a lease written before the Redis process
started counts as run out once the workers had time to renew theirs, and once per Redis process
every unfinished line that is nowhere (not leased, waiting or queued) is sent again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

import redis

from batchq.domain import leases
from batchq.domain.leases import Contact
from batchq.domain.models import Batch
from batchq.domain.results import LOST
from batchq.domain.status import Status, is_terminal
from batchq.errors import NewerSchema
from batchq.execution import dispatch
from batchq.execution.finalize import claim_lines, missing_lines
from batchq.runtime import Runtime, TaskQueue
from batchq.storage import clock, keys
from batchq.storage.redis_client import last_trouble
from batchq.storage.server import ServerInfo, server_info, with_first_seen

log = logging.getLogger("batchq.watchdog")


class Action(StrEnum):
    FINALIZE = "finalize"
    SUBMIT = "submit"
    REQUEUE_EXPIRED = "requeue_expired"
    RESEND_LOST = "resend_lost"
    WAIT = "wait"


@dataclass(frozen=True)
class Facts:
    batch: Batch
    now: float
    expired_leases: list[int]
    live_leases: int
    progress_at: float
    waiting: int = 0  # line tasks not granted yet (in the scheduler)
    in_queue: int = 0  # its granted tasks still in the line queue
    finalize_failed_at: float | None = None  # a finalize could not write the result files then (it retries)
    busy: bool = False  # a submit or a finalize of it runs now (its lock held by a worker that beats)


STEP_S = 120.0  # how long a submit or a finalize (one pass over a file) may take before it is run again


def plan(f: Facts, lease_s: float, step_s: float = STEP_S) -> Action:
    """What to do with one active batch. ``lease_s``: a line's lease (its worker beats three times
    in it); ``step_s``: how long a submit or a finalize may run before it is started again."""
    b = f.batch
    counts = b.request_counts
    if f.finalize_failed_at is not None and f.now - f.finalize_failed_at <= step_s:
        return Action.WAIT  # its finalize task retries until the disk has room again
    if b.status is Status.CANCELLING or (b.expires_at is not None and f.now >= b.expires_at):
        return Action.FINALIZE
    if b.status is Status.VALIDATING:
        return Action.SUBMIT if not f.busy and f.now - b.created_at > step_s else Action.WAIT
    if b.status is Status.FINALIZING or counts.completed + counts.failed >= counts.total:
        quiet = f.now - f.progress_at
        stale = b.status is Status.IN_PROGRESS or (not f.busy and quiet > lease_s) or quiet > step_s
        return Action.FINALIZE if stale else Action.WAIT
    if f.expired_leases:
        return Action.REQUEUE_EXPIRED
    if f.live_leases or f.now - f.progress_at <= lease_s or f.waiting or f.in_queue:
        return Action.WAIT  # running, recently moved, or its lines wait their turn
    return Action.RESEND_LOST


ORPHAN_SWEEP_EVERY_S = 600  # at most; sooner with a shorter BATCHQ_ORPHAN_GRACE_S


def sweep(rt: Runtime, queue: TaskQueue, contact: Contact | None = None) -> None:
    """``contact``: this process's breaks with Redis (``batchq.domain.leases.Contact``); no lease is
    judged run out by its time within a grace after one (the workers had no way to renew them).
    Checked again for every batch: a break in the middle of the sweep counts at once."""
    contact = contact or Contact()
    with rt.deployment.checked_once() as mismatch:  # once per sweep (the stores' guards reuse it)
        if mismatch is None:  # else Redis and the data are not one deployment: delete nothing
            delete_expired(rt)
    now = clock.sync(rt.redis)  # Redis's TIME, once per sweep: every lease is stamped on it
    info = _server_info(rt)
    stale = leases.stale_before(info, now) if info else None
    in_queue = queue.queued_lines()  # a short list: about BATCHQ_QUEUE_DEPTH tasks
    for batch_id in rt.batches.active_ids():
        try:
            check(rt, queue, batch_id, in_queue, stale, contact)
        except NewerSchema:  # a newer release's batch: this process stops (workers.tasks.watchdog_loop)
            raise
        except Exception as exc:  # one broken batch must not stop the sweep of the others
            if isinstance(exc, redis.RedisError):
                contact.note_break(time.monotonic())
            log.exception("watchdog failed on a batch", extra={"batch_id": batch_id})
    if info is not None and stale is not None:
        reconcile_once(rt, queue, info)
    rt.scheduler.fill(time.time())


def delete_expired(rt: Runtime) -> None:
    """Expired files and uploads, and orphans (files without a record) past their grace."""
    deleted = rt.files.delete_expired(keep=set(rt.batches.active_inputs().values()))
    if deleted:
        log.info("expired files deleted", extra={"count": deleted})
    expire_uploads(rt)
    try:
        remove_orphans(rt)
    except Exception:  # a file's trouble must not hold up the batches
        log.exception("orphan sweep failed")


def _server_info(rt: Runtime) -> ServerInfo | None:
    """Redis's run_id and start, or None where INFO is refused (then leases only run out in time)."""
    try:
        return with_first_seen(rt.redis, server_info(rt.redis))
    except redis.ResponseError as exc:
        log.debug("redis INFO refused: no fast recovery after a restart", extra={"reason": str(exc)})
        return None


def expire_uploads(rt: Runtime) -> None:
    try:
        expired = rt.uploads.expire_due()
    except Exception:  # an upload's trouble must not hold up the batches
        log.exception("upload expiry failed")
        return
    if expired:
        log.info("uploads expired", extra={"count": expired})


def check(
    rt: Runtime,
    queue: TaskQueue,
    batch_id: str,
    in_queue: set[tuple[str, int]],
    stale: float | None = None,
    contact: Contact | None = None,
) -> None:
    """``stale``: leases written before this time run out now (their Redis process is gone);
    ``contact``: None judges leases by their time (no break known)."""
    batch = rt.batches.get(batch_id)
    if batch is None or is_terminal(batch.status):
        rt.redis.srem(keys.ACTIVE_BATCHES, batch_id)
        return
    facts = _facts(rt, batch, in_queue, stale, contact)
    if batch.status is Status.IN_PROGRESS and facts.waiting:
        dispatch.enroll(rt, batch)
    action = plan(facts, rt.settings.line_lease_s)
    if action is not Action.WAIT:
        log.info("watchdog acts", extra={"batch_id": batch_id, "action": action.value})
    _act(rt, queue, batch, action, facts)


def _facts(
    rt: Runtime, batch: Batch, in_queue: set[tuple[str, int]], stale: float | None, contact: Contact | None
) -> Facts:
    held = rt.batches.leases(batch.id)
    now = clock.now()  # after the leases: a lease renewed while they were read is not judged on an older now
    lease_s = rt.settings.line_lease_s
    settled = contact is None or settled_now(rt, contact)
    record = rt.batches.bookkeeping(batch.id)
    progress = record.progress_at if record and record.progress_at else None
    last = progress or float(batch.in_progress_at or batch.created_at)
    expired = sorted(i for i, until in held.items() if leases.run_out(until, now, lease_s, stale, settled))
    waiting = rt.scheduler.waiting(batch.id)
    mine = sum(1 for b, _ in in_queue if b == batch.id)
    failed_at = record.finalize_failed_at if record else None
    busy = rt.batches.busy(batch.id)
    return Facts(batch, now, expired, len(held) - len(expired), last, waiting, mine, failed_at, busy)


def settled_now(rt: Runtime, contact: Contact) -> bool:
    """Leases may be judged by their time now: no break with Redis lately (a command of this
    process failed or was retried, ``last_trouble``), and this process's own heartbeat is not late
    (its host stalled: the leases it would judge are its own)."""
    contact.note_break(last_trouble())
    at = time.monotonic()
    return contact.settled(at) and leases.beating(rt.held.beat_at, at, rt.settings.line_lease_s)


def remove_orphans(rt: Runtime) -> None:
    """Files on disk without a record, older than the grace: removed, one log line each."""
    grace = rt.settings.orphan_grace_s
    if not rt.redis.set(keys.ORPHANS_SWEPT, "1", nx=True, ex=max(1, int(min(ORPHAN_SWEEP_EVERY_S, grace)))):
        return
    for file_id, size in rt.files.remove_orphans(time.time() - grace):
        log.warning("orphan file removed: no record in redis", extra={"file_id": file_id, "bytes": size})
    for upload_id in rt.uploads.remove_orphans(time.time() - grace):
        log.warning("orphan upload parts removed: no record in redis", extra={"upload_id": upload_id})


def reconcile_once(rt: Runtime, queue: TaskQueue, info: ServerInfo) -> None:
    """Once per Redis process: send again every unfinished line of a running batch that is nowhere."""
    if rt.redis.get(keys.RECONCILED_RUN) == info.run_id.encode():
        return
    in_queue = queue.queued_lines()
    for batch_id in rt.batches.active_ids():
        batch = rt.batches.get(batch_id)
        if batch is not None and batch.status is Status.VALIDATING and not rt.batches.busy(batch_id):
            queue.submit_batch(batch_id)  # its submit task may have been lost with the worker
        if batch is not None and batch.status is Status.IN_PROGRESS:
            found = resend_unseen(rt, queue, batch, {i for b, i in in_queue if b == batch_id})
            if found:
                log.warning("lines lost with redis sent again", extra={"batch_id": batch_id, "lines": found})
    rt.redis.set(keys.RECONCILED_RUN, info.run_id)


def resend_unseen(rt: Runtime, queue: TaskQueue, batch: Batch, queued: set[int]) -> int:
    """Send again the unfinished lines that are not leased, not waiting and not queued; returns how many."""
    waiting = queue.waiting_lines(batch.id)
    unseen = [i for i in _unleased(rt, batch) if i not in waiting and i not in queued]
    if unseen:
        requeue(rt, queue, batch, unseen)
    return len(unseen)


def _act(rt: Runtime, queue: TaskQueue, batch: Batch, action: Action, facts: Facts) -> None:
    if action is Action.FINALIZE:
        queue.finalize_batch(batch.id)
    elif action is Action.SUBMIT:
        queue.submit_batch(batch.id)
    elif action is Action.REQUEUE_EXPIRED:
        requeue(rt, queue, batch, facts.expired_leases)
    elif action is Action.RESEND_LOST:
        resend_lost(rt, queue, batch)


def resend_lost(rt: Runtime, queue: TaskQueue, batch: Batch) -> None:
    """Send again every unfinished line whose task is nowhere: looked at afresh, since a line
    granted after the sweep read the queue is not lost (and each resend spends its budget)."""
    in_queue = queue.queued_lines()
    if rt.scheduler.waiting(batch.id) or any(b == batch.id for b, _ in in_queue):
        return
    requeue(rt, queue, batch, _unleased(rt, batch))


def _unleased(rt: Runtime, batch: Batch) -> list[int]:
    """The batch's unfinished lines that no worker holds a lease on."""
    leases = rt.batches.leases(batch.id)
    return [i for i in missing_lines(rt, batch.id, batch.request_counts.total) if i not in leases]


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
        queue.requeue_lines(batch.id, again)
    if lost:
        claim_lines(rt, batch, lost, *LOST)
    rt.batches.touch(batch.id, clock.now())
