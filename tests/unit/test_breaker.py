"""The route breaker's rule on a made-up clock."""

from __future__ import annotations

from batchq.domain.health import Breaker, BreakerPolicy, RouteState, gives_up

POLICY = BreakerPolicy(failures=3, probe_s=1.0, max_outage_s=60.0)


def run(outcomes: list[str], policy: BreakerPolicy = POLICY) -> tuple[Breaker, list[bool]]:
    breaker, changes = Breaker(), []
    for t, outcome in enumerate(outcomes):
        breaker, changed = breaker.record(outcome, float(t), policy)
        changes.append(changed)
    return breaker, changes


def test_down_outcomes_in_a_row_open_it_once() -> None:
    breaker, changes = run(["down"] * 5)
    assert breaker.state is RouteState.OPEN and breaker.open_since == 2.0
    assert changes == [False, False, True, False, False]


def test_an_answer_between_down_outcomes_keeps_it_closed() -> None:
    breaker, changes = run(["down", "down", "error", "down", "down", "throttled", "down"])
    assert breaker.state is RouteState.CLOSED and not any(changes)


def test_the_first_answer_closes_it() -> None:
    breaker, changes = run(["down"] * 3 + ["ok"])
    assert breaker == Breaker() and changes[-1]


def test_no_breaker_never_opens() -> None:
    breaker, changes = run(["down"] * 10, BreakerPolicy(failures=0))
    assert breaker.state is RouteState.CLOSED and not any(changes)


def test_a_waiting_line_gives_up_after_the_outage_limit_or_its_deadline() -> None:
    assert not gives_up(100.0, 159.0, POLICY)
    assert gives_up(100.0, 160.0, POLICY)
    assert gives_up(100.0, 110.0, POLICY, deadline=105.0)
