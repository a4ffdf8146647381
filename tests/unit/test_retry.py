"""Unit tests for batchq.domain.retry (what is retried, and when)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchq.domain.retry import RetryPolicy, backoff_s, is_retryable_status, parse_retry_after, should_retry


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 520, 524, 599])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 401, 403, 404, 413, 422, 501, 505, 511])
def test_non_retryable_statuses(status: int) -> None:
    assert not is_retryable_status(status)


@given(attempt=st.integers(min_value=1, max_value=50), seed=st.integers())
def test_backoff_is_full_jitter_below_the_exponential_ceiling_and_the_cap(attempt: int, seed: int) -> None:
    policy = RetryPolicy(base_s=0.5, max_backoff_s=60.0)
    wait = backoff_s(policy, attempt, None, random.Random(seed))
    assert 0.0 <= wait <= min(60.0, 0.5 * 2 ** (attempt - 1))


def test_backoff_first_attempt_is_at_most_base() -> None:
    policy = RetryPolicy(base_s=0.5, max_backoff_s=60.0)
    rng = random.Random(1)
    assert all(0.0 <= backoff_s(policy, 1, None, rng) <= 0.5 for _ in range(200))


def test_backoff_is_jittered_not_constant() -> None:
    policy = RetryPolicy(base_s=1.0, max_backoff_s=60.0)
    rng = random.Random(7)
    assert len({backoff_s(policy, 4, None, rng) for _ in range(20)}) > 1


def test_backoff_with_zero_base_is_zero() -> None:
    policy = RetryPolicy(base_s=0.0)
    assert backoff_s(policy, 5, None, random.Random(0)) == 0.0


def test_backoff_honors_retry_after() -> None:
    policy = RetryPolicy(base_s=0.5, max_backoff_s=60.0)
    assert backoff_s(policy, 1, 7.0, random.Random(0)) == 7.0


def test_backoff_retry_after_is_capped_by_max_backoff() -> None:
    policy = RetryPolicy(max_backoff_s=60.0)
    assert backoff_s(policy, 1, 3600.0, random.Random(0)) == 60.0


def test_backoff_negative_retry_after_is_zero() -> None:
    assert backoff_s(RetryPolicy(), 1, -5.0, random.Random(0)) == 0.0


def test_backoff_retry_after_zero_is_zero() -> None:
    assert backoff_s(RetryPolicy(base_s=10.0), 3, 0.0, random.Random(0)) == 0.0


def test_should_retry_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, max_total_s=1000.0)
    assert should_retry(policy, 1, 0.0, 0.0)
    assert should_retry(policy, 2, 0.0, 0.0)
    assert not should_retry(policy, 3, 0.0, 0.0)
    assert not should_retry(policy, 4, 0.0, 0.0)


def test_should_retry_respects_total_time_including_the_wait() -> None:
    policy = RetryPolicy(max_attempts=10, max_total_s=100.0)
    assert should_retry(policy, 1, 90.0, 10.0)
    assert not should_retry(policy, 1, 90.0, 10.5)
    assert not should_retry(policy, 1, 101.0, 0.0)


def test_single_attempt_policy_never_retries() -> None:
    assert not should_retry(RetryPolicy(max_attempts=1), 1, 0.0, 0.0)


@pytest.mark.parametrize(
    ("value", "seconds"), [("0", 0.0), ("5", 5.0), ("1.5", 1.5), (" 3 ", 3.0), ("86399", 86_399.0)]
)
def test_parse_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "-1", "86400", "1e9", "nan", "inf", "-inf", "Wed, 21 Oct 2015 07:28:00 GMT"],
)
def test_parse_retry_after_rejects_absent_odd_or_out_of_range(value: str | None) -> None:
    assert parse_retry_after(value) is None
