"""Which upstream outcomes are retried, and how long to wait before the next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    max_total_s: float = 900.0
    base_s: float = 0.5
    max_backoff_s: float = 60.0


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 520


def backoff_s(policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Wait before attempt ``attempt + 1`` (attempt counts from 1): full jitter, or Retry-After."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_backoff_s)
    ceiling = min(policy.max_backoff_s, policy.base_s * (2 ** (attempt - 1)))
    return rng.uniform(0, ceiling)


def should_retry(policy: RetryPolicy, attempt: int, elapsed_s: float, wait_s: float) -> bool:
    """Another attempt fits within both the attempt budget and the total time budget."""
    return attempt < policy.max_attempts and elapsed_s + wait_s <= policy.max_total_s


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form only); None if absent or odd."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None
