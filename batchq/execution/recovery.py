"""Recovery after Redis restarts: the lines in flight when it went away are sent again within
seconds of its return, not after their whole lease, and still run exactly once.

A Redis restarted from its append-only file brings back the leases of the lines that were in
flight, but not always the workers that held them (their Celery messages, their threads' state,
the last second of writes). So:

- **Each worker process** keeps the lines its threads hold (``HeldLines``), each with the Redis
  ``run_id`` it was leased under, and asks Redis for its ``run_id`` every ``CHECK_S``. A line
  leased under another Redis process gets its lease renewed: the line is alive and will complete.
- **The watchdog** treats a lease written before the Redis process started as expired once
  Redis has been up ``GRACE_S`` (time for the workers to renew theirs): the line is sent again.
- **Once per Redis process** (its ``run_id`` is recorded when done), the watchdog also sends
  again every unfinished line of a running batch that is nowhere: not leased, not waiting in the
  scheduler, not in the line queue. The last second of writes before a crash can lose a line's
  lease, or its waiting task, or the worker's record of having taken it from the queue.

A line sent twice this way still runs exactly once: ``BEGIN_LINE`` refuses a line another worker
holds a live lease on, and ``COMPLETE_LINE`` stores a line's result only once (the done bitmap).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from batchq.storage.server import ServerInfo, server_info

log = logging.getLogger("batchq.recovery")
CHECK_S = 2.0  # how often a worker process asks Redis for its run_id
GRACE_S = 3 * CHECK_S  # how long after a restart the watchdog waits for the workers' renewals


class HeldLines:
    """The lines this process's threads hold a lease on, each with the Redis ``run_id`` it was last
    leased under; ``check`` renews those whose Redis has restarted since."""

    def __init__(self) -> None:
        self.run_id: str | None = None  # Redis's run_id when last checked
        self._held: dict[tuple[str, int], str | None] = {}
        self._lock = threading.Lock()

    def add(self, batch_id: str, index: int) -> None:
        with self._lock:
            self._held[batch_id, index] = self.run_id

    def discard(self, batch_id: str, index: int) -> None:
        with self._lock:
            self._held.pop((batch_id, index), None)

    def check(self, client: redis.Redis, renew: Callable[[str, list[int]], object]) -> bool:
        """Renew (``renew(batch_id, indices)``) the leases taken under an older Redis process than
        the one answering now, or before the first check; True when Redis restarted since the last check."""
        run_id = server_info(client).run_id
        restarted = self.run_id is not None and run_id != self.run_id
        self.run_id = run_id
        stale = self._stale(run_id)
        for batch_id, indices in stale.items():
            renew(batch_id, indices)
            with self._lock:
                self._held.update({(batch_id, i): run_id for i in indices if (batch_id, i) in self._held})
        if restarted or stale:
            lines = sum(len(i) for i in stale.values())
            message = "redis restarted: leases of the lines held here renewed" if restarted else "leases renewed"
            log.log(logging.WARNING if restarted else logging.DEBUG, message, extra={"lines": lines})
        return restarted

    def _stale(self, run_id: str) -> dict[str, list[int]]:
        with self._lock:
            held = [line for line, seen in self._held.items() if seen != run_id]
        grouped: dict[str, list[int]] = {}
        for batch_id, index in held:
            grouped.setdefault(batch_id, []).append(index)
        return grouped


def stale_before(info: ServerInfo, now: float) -> float | None:
    """Leases written before this time are stale (their Redis process is gone), once the grace after
    it was first seen answering is over. A second early: its start time is rounded to the second."""
    seen = max(info.first_seen, info.started_at)
    return info.started_at - 1 if now >= seen + GRACE_S else None


def is_stale(until: float, lease_s: float, before: float | None) -> bool:
    """A lease was written (or last renewed) ``lease_s`` before it runs out."""
    return before is not None and until - lease_s < before
