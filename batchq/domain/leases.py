"""When a line's lease counts as run out: the pure decisions of crash recovery (no I/O).

Every time here is on one clock: Redis's (``batchq.storage.clock``), not each host's own, so a
worker whose clock is off stamps leases the watchdog reads right. ``Contact`` takes monotonic
times (a break is a span of this process's life, whatever the wall clock does meanwhile).
"""

from __future__ import annotations

from typing import Protocol

CHECK_S = 2.0  # the longest between two beats of a worker process (each asks Redis for its run_id)
GRACE_S = 3 * CHECK_S  # how long after a restart (or a break) the watchdog waits for the workers' renewals


class Started(Protocol):
    @property
    def started_at(self) -> float: ...  # when the Redis process started (to the second)

    @property
    def first_seen(self) -> float: ...  # when it was first seen answering (after its AOF loaded)


class Contact:
    """Since when this process has reached Redis without a break. A break is a call that failed
    (or was retried: ``batchq.storage.redis_client.last_trouble``), one that took longer than
    ``CHECK_S``, or a watchdog loop that woke up late (this host stalled: its own heartbeat did
    not run either). The workers could not renew their leases meanwhile, so the watchdog judges
    no lease by its time until ``GRACE_S`` after it (else every line in flight across a Redis
    outage longer than a lease would be sent twice)."""

    def __init__(self) -> None:
        self.since = float("-inf")  # no break seen yet (monotonic)

    def note(self, ok: bool, took: float, now: float) -> None:
        if not ok or took > CHECK_S:
            self.since = max(self.since, now)

    def note_break(self, at: float | None) -> None:
        if at is not None:
            self.since = max(self.since, at)

    def settled(self, now: float) -> bool:
        return now - self.since >= GRACE_S


def woke_late(scheduled: float, woke: float, interval: float) -> bool:
    """A loop meant to wake at ``scheduled`` woke more than its ``interval`` past it (its host stalled)."""
    return woke - scheduled > max(interval, CHECK_S)


def beat_every(lease_s: float) -> float:
    """How often a worker process beats: at least three times per lease, at most every ``CHECK_S``."""
    return min(CHECK_S, lease_s / 3)


def beating(last_beat: float | None, now: float, lease_s: float) -> bool:
    """This process's heartbeat ran lately (None: it has none, a scheduler-only process): while it
    is late the host itself stalled, and the leases the watchdog would judge are its own too."""
    return last_beat is None or now - last_beat <= 2 * beat_every(lease_s) + CHECK_S


def stale_before(info: Started, now: float) -> float | None:
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
