"""Words of the scheduler and the line scripts, and when a batch becomes urgent. Pure."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What ``BEGIN_LINE`` says about a delivered line task."""

    GO = "go"  # leased to this worker: send it
    DONE = "done"  # already has a result (a redelivered message)
    LEASED = "leased"  # another worker runs it now
    STOP = "stop"  # the batch is not running (cancelling, finished, gone)
    EXPIRED = "expired"  # the batch is past its expires_at


def urgent_at(created_at: float, expires_at: float, share: float) -> float:
    """When a batch moves ahead of every fair share: in the last ``share`` of its completion window."""
    return expires_at - share * max(0.0, expires_at - created_at)
