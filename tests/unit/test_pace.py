"""What a route learns from its 429s, on a made-up clock: waits, the pace, bursts."""

from __future__ import annotations

import pytest

from batchq.domain.pace import CREEP_S, FIRST_WAIT_S, MAX_WAIT_S, Pace
from batchq.domain.retry import parse_duration, rate_limit_wait


def test_a_hint_is_the_wait_and_without_one_the_wait_doubles_while_429s_come_in_a_row() -> None:
    pace, wait = Pace().throttled(3.0, 0.0, 10.0)
    assert wait == 3.0
    waits = []
    for i in range(8):
        pace, wait = pace.throttled(0.0, 11.0 + i * 10, 11.0 + i * 10 + 0.01)
        waits.append(wait)
    assert waits == [FIRST_WAIT_S, 1.0, 2.0, 4.0, MAX_WAIT_S, MAX_WAIT_S, MAX_WAIT_S, MAX_WAIT_S]
    pace, wait = pace.answered().throttled(0.0, 200.0, 200.5)
    assert wait == FIRST_WAIT_S  # answers got through in between: a new burst


def test_429s_to_requests_sent_before_the_last_one_was_recorded_teach_nothing() -> None:
    pace, _ = Pace().throttled(0.0, 9.9, 10.0)
    again, wait = pace.throttled(0.0, 9.95, 10.1)  # sent before 10.0: the same burst
    assert (again, wait) == (pace, 0.0)


def test_the_pace_is_what_got_through_between_the_first_429s_of_two_bursts() -> None:
    """A fixed window of 600 a minute: 600 answers by t=1, 429s until 60, 600 more by 61."""
    pace = Pace()
    for _ in range(600):
        pace = pace.answered()  # nothing counted before any 429
    pace, _ = pace.throttled(0.0, 1.0, 1.0)
    assert pace.answers == 0 and pace.rate == 0 and pace.since == 1.0
    for t in (2.0, 4.0, 8.0, 16.0, 32.0):  # 429s in a row: the period goes on
        pace, _ = pace.throttled(0.0, t, t)
    assert pace.since == 1.0
    for _ in range(600):
        pace = pace.answered()
    pace, _ = pace.throttled(0.0, 61.0, 61.0)
    assert pace.rate == pytest.approx(10.0) and pace.since == 61.0


def test_a_short_burst_teaches_no_pace() -> None:
    pace, _ = Pace().throttled(0.0, 1.0, 1.0)
    for _ in range(50):
        pace = pace.answered()
    pace, _ = pace.throttled(0.0, 5.0, 5.0)  # the last burst was one 429: a passing refusal
    assert pace.rate == 0 and pace.since == 5.0


def test_the_pace_creeps_up_to_twice_the_learnt_one_without_429s() -> None:
    pace = Pace(rate=10.0, last=100.0)
    assert pace.rate_at(100.0) == 10.0
    assert pace.rate_at(100.0 + CREEP_S / 2) == pytest.approx(15.0)
    assert pace.rate_at(100.0 + 10 * CREEP_S) == 20.0
    assert Pace().rate_at(5.0) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1m30.5s", 90.5), ("2h", 7200.0), ("2.5", 2.5), ("x", None)],
)
def test_openai_reset_durations(value: str, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_a_429_waits_for_retry_after_else_the_reset_of_the_spent_limit() -> None:
    assert rate_limit_wait({"retry-after": "3", "x-ratelimit-reset-requests": "9s"}) == 3.0
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    assert rate_limit_wait(spent | {"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "1s"}) == 360.0
    assert rate_limit_wait({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "7s"}) == 7.0
    assert rate_limit_wait({}) is None
