"""Which upstream outcomes are retried, and how long to wait before the next attempt.

A 429 is not an attempt's failure: the line waits for its route (``batchq.domain.pace``) within a
time budget, ``max_throttled_s``, and keeps its attempts for the errors that are."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    max_total_s: float = 900.0
    max_throttled_s: float = 1800.0  # a line waits through 429s this long at most (they spend no attempt)
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


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(value: str | None) -> float | None:
    """Seconds from an ``x-ratelimit-reset-*`` value: OpenAI's ``"1s"``, ``"6m0s"``, ``"20ms"``,
    or plain seconds; None if absent or odd."""
    if value is None:
        return None
    text = value.strip()
    if _DURATION.fullmatch(text) is None:
        return parse_retry_after(text)
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks to wait: ``Retry-After``, else the ``x-ratelimit-reset-*`` of the limit
    whose ``x-ratelimit-remaining-*`` is 0 (or the longer reset when neither says); None: no hint."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is not None:
        return retry_after
    resets = {kind: parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) for kind in ("requests", "tokens")}
    spent = [resets[kind] for kind in resets if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0"]
    known = [r for r in (spent or list(resets.values())) if r is not None]
    return max(known) if known else None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form only); None if absent or odd."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None
