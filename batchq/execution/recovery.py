"""Recovery after crashes: the lines in flight when a worker or Redis went away are sent again
within seconds, not after a long timeout, and still run exactly once.

**A worker's heartbeat.** What a worker holds in Redis lives only as long as the worker beats:
each worker process renews, every ``beat_every`` (a third of ``BATCHQ_LINE_LEASE_S`` at most
``CHECK_S``), the lease of every line its threads hold (``HeldLines``) and the expiry of every
upstream slot they hold (``batchq.storage.limits.HeldSlots``) and of every batch lock (a submit or
a finalize running: ``HeldLocks``), all by ``BATCHQ_LINE_LEASE_S``.
A killed worker stops beating: its leases run out and the watchdog re-sends its lines, and its
slots drop out of the route's in-flight set at the next ``ACQUIRE`` — so a ghost cannot hold a
route's window, and nothing waits for the upstream timeout; its batch locks run out and the
watchdog submits or finalizes the batch again.

**Redis restarts.** A Redis restarted from its append-only file brings back the leases of the lines that were in
flight, but not always the workers that held them (their Celery messages, their threads' state,
the last second of writes). So:

- **Each worker process** asks Redis for its ``run_id`` at every beat and renews the leases of
  the lines it holds: after a restart too, the line is alive and will complete.
- **The watchdog** treats a lease written before the Redis process started as expired once
  Redis has been up ``GRACE_S`` (time for the workers to renew theirs): the line is sent again.
  After any break in its own contact with Redis (``Contact``) it judges no lease by its time for
  ``GRACE_S`` either: the workers renew theirs first.
- **Once per Redis process** (its ``run_id`` is recorded when done), the watchdog also sends
  again every unfinished line of a running batch that is nowhere: not leased, not waiting in the
  scheduler, not in the line queue. The last second of writes before a crash can lose a line's
  lease, or its waiting task, or the worker's record of having taken it from the queue.

A line sent twice this way is stored exactly once: ``BEGIN_LINE`` refuses a line another worker
holds a live lease on, and ``COMPLETE_LINE`` stores a line's result only once (the done bitmap). It
may still reach the upstream twice: a worker that lost contact with Redis for longer than a lease
(or whose host stalled that long) can still be sending it when the line is sent again.

The decisions (when a lease counts as run out, how often to beat) are pure, in
``batchq.domain.leases``; this module holds what a process keeps in memory for its heartbeat.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

import redis

from batchq.storage.server import server_info

log = logging.getLogger("batchq.recovery")


class HeldLines:
    """The lines this process's threads hold a lease on; ``check`` renews every one of them.

    Counted, not a set: a line run by two threads of one process at once (a redelivered message)
    stays renewed until both let it go."""

    def __init__(self) -> None:
        self.run_id: str | None = None  # Redis's run_id when last checked
        self.beat_at: float | None = None  # monotonic: the heartbeat last reached Redis (None: no heartbeat here)
        self._held: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def add(self, batch_id: str, index: int) -> None:
        with self._lock:
            self._held[(batch_id, index)] += 1

    def discard(self, batch_id: str, index: int) -> None:
        with self._lock:
            line = (batch_id, index)
            self._held[line] -= 1
            if self._held[line] <= 0:
                del self._held[line]

    def check(self, client: redis.Redis, renew: Callable[[str, list[int]], object]) -> bool:
        """The heartbeat: renew (``renew(batch_id, indices)``) the lease of every line held here;
        True when Redis restarted since the last check (a new ``run_id``; never where INFO is refused)."""
        run_id = _run_id(client)
        restarted = None not in (run_id, self.run_id) and run_id != self.run_id
        self.run_id = run_id or self.run_id
        held = self.grouped()
        for batch_id, indices in held.items():
            try:  # one batch's trouble must not cost the others their renewal
                renew(batch_id, indices)
            except redis.RedisError:
                log.debug("lease renewal failed", extra={"batch_id": batch_id}, exc_info=True)
        if restarted:
            lines = sum(len(i) for i in held.values())
            log.warning("redis restarted: leases of the lines held here renewed", extra={"lines": lines})
        return restarted

    def grouped(self) -> dict[str, list[int]]:
        with self._lock:
            held = list(self._held)
        grouped: dict[str, list[int]] = {}
        for batch_id, index in held:
            grouped.setdefault(batch_id, []).append(index)
        return grouped


def _run_id(client: redis.Redis) -> str | None:
    """Redis's run_id, or None where INFO is refused (a managed Redis) or did not answer: the leases
    are renewed all the same."""
    try:
        return server_info(client).run_id
    except redis.RedisError:
        return None


class HeldLocks:
    """The batch locks this process holds (a submit or a finalize running): key -> token."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, key: str, token: str) -> None:
        with self._lock:
            self._held[key] = token

    def discard(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._held)
