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
CHECK_S = 2.0  # the longest between two beats of a worker process (each asks Redis for its run_id)
GRACE_S = 3 * CHECK_S  # how long after a restart the watchdog waits for the workers' renewals


class HeldLines:
    """The lines this process's threads hold a lease on; ``check`` renews every one of them."""

    def __init__(self) -> None:
        self.run_id: str | None = None  # Redis's run_id when last checked
        self._held: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def add(self, batch_id: str, index: int) -> None:
        with self._lock:
            self._held.add((batch_id, index))

    def discard(self, batch_id: str, index: int) -> None:
        with self._lock:
            self._held.discard((batch_id, index))

    def check(self, client: redis.Redis, renew: Callable[[str, list[int]], object]) -> bool:
        """The heartbeat: renew (``renew(batch_id, indices)``) the lease of every line held here;
        True when Redis restarted since the last check (a new ``run_id``; never where INFO is refused)."""
        run_id = _run_id(client)
        restarted = None not in (run_id, self.run_id) and run_id != self.run_id
        self.run_id = run_id
        held = self.grouped()
        for batch_id, indices in held.items():
            renew(batch_id, indices)
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
    """Redis's run_id, or None where INFO is refused (a managed Redis): the leases are renewed all the same."""
    try:
        return server_info(client).run_id
    except redis.ResponseError:
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


class Contact:
    """Since when this process has reached Redis without a break. A break is a call that failed, or
    took longer than ``CHECK_S`` (the client spent it retrying): the workers could not renew their
    leases meanwhile either, so the watchdog judges no lease by its time until ``GRACE_S`` after it
    (else every line in flight across a Redis outage longer than a lease would be sent twice)."""

    def __init__(self) -> None:
        self.since = float("-inf")  # no break seen yet

    def note(self, ok: bool, took: float, now: float) -> None:
        if not ok or took > CHECK_S:
            self.since = now

    def settled(self, now: float) -> bool:
        return now - self.since >= GRACE_S


def beat_every(lease_s: float) -> float:
    """How often a worker process beats: at least three times per lease, at most every ``CHECK_S``."""
    return min(CHECK_S, lease_s / 3)


def stale_before(info: ServerInfo, now: float) -> float | None:
    """Leases written before this time are stale (their Redis process is gone), once the grace after
    it was first seen answering is over. A second early: its start time is rounded to the second."""
    seen = max(info.first_seen, info.started_at)
    return info.started_at - 1 if now >= seen + GRACE_S else None


def run_out(until: float, now: float, lease_s: float, stale: float | None, settled: bool) -> bool:
    """Whether the watchdog takes a lease as run out: by its time once Redis answered without a
    break for a while (``settled``), or written before a Redis restart (``stale``, see ``stale_before``)."""
    return (settled and until <= now) or is_stale(until, lease_s, stale)


def is_stale(until: float, lease_s: float, before: float | None) -> bool:
    """A lease was written (or last renewed) ``lease_s`` before it runs out."""
    return before is not None and until - lease_s < before
