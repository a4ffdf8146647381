"""The gradient limit on a made-up clock: growth, back-off, stability against a queueing upstream."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from batchq.domain.gradient import Gradient, GradientLimit


def feed(limit: GradientLimit, state: Gradient | None, latency: float, count: int, start: float) -> Gradient:
    for i in range(count):
        state = limit.update(state, latency, start + i * 0.01)
    assert state is not None
    return state


def test_slow_start_doubles_then_grows_by_one_per_window_within_the_band() -> None:
    limit = GradientLimit(cap=256, w0=8, tolerance=1.2)
    state = feed(limit, None, 0.2, 8, 0.0)
    assert state.w == 16 and state.slow_start  # one per answer: a window's worth of answers doubles it
    state = limit.update(state, 0.6, 1.0)  # a slow answer, but one among many: short barely moves
    assert state.w == 17
    for i in range(20):  # slower answers: short crosses the tolerance, and the first back-off ends slow start
        before, state = state, limit.update(state, 0.3, 2.0 + i * 0.01)
        if not state.slow_start:
            break
    assert not state.slow_start and state.w < before.w
    calm = feed(limit, state, 0.2, 200, 3.0)
    assert calm.w == pytest.approx(state.w + 200 / state.w, rel=0.1)  # about one per window's answers
    loaded = replace(calm, short=calm.base * 1.15)  # above half the tolerance, below the whole: hold
    assert limit.update(loaded, calm.base * 1.15, 6.0).w == calm.w


def test_latency_above_tolerance_cuts_in_proportion_at_most_a_fifth_and_once_per_latency() -> None:
    limit = GradientLimit(cap=256, w0=8, tolerance=1.2)
    state = feed(limit, None, 0.2, 100, 0.0)
    grown = state.w
    state = feed(limit, state, 1.0, 30, 1.0)  # short rises over tolerance x base within a few answers
    assert not state.slow_start
    assert grown * 0.8**2 <= state.w < grown  # 0.3 s of answers, short about 0.6 s: at most one cut per latency
    state = feed(limit, state, 1.0, 3000, 2.0)  # 30 s: cut after cut, until the window would go below w0
    assert state.w >= 8, "never below the starting window"
    assert state.base > 0.8, "1 s is the upstream's own latency now"


def test_the_window_stays_within_one_and_the_cap() -> None:
    rng = random.Random(7)
    limit = GradientLimit(cap=64, w0=8, tolerance=1.1)
    state = None
    for i in range(20_000):
        state = limit.update(state, rng.lognormvariate(-1.5, 1.0), i * 0.005)
        assert 1 <= state.w <= 64


def test_against_a_queueing_upstream_it_settles_near_its_capacity_without_swinging() -> None:
    """vLLM-like: K requests served at once, 200 ms each, the rest queued (latency grows with w / K)."""
    k, service = 32, 0.2
    limit = GradientLimit(cap=256, w0=8, tolerance=1.1)
    state, now, seen = None, 0.0, []
    for _ in range(6000):
        latency = service * max(1.0, (state.w if state else 8) / k)
        state = limit.update(state, latency, now)
        now += latency / max(1.0, state.w)  # answers come w at a time per latency
        seen.append(state.w)
    settled = seen[2000:]
    assert k * 0.7 <= min(settled) and max(settled) <= k * 1.5, (min(settled), max(settled))


def test_a_background_limit_yields_where_a_normal_one_grows() -> None:
    normal = GradientLimit(cap=64, w0=8, tolerance=1.5)
    background = GradientLimit(cap=64, w0=8, tolerance=1.05, min_cut=0.5)
    after = {}
    for name, limit in (("normal", normal), ("background", background)):
        state = feed(limit, None, 0.2, 40, 0.0)
        after[name] = (state.w, feed(limit, state, 0.26, 100, 1.0).w)  # 30 % slower
    assert after["normal"][1] > after["normal"][0], "within the normal route's tolerance: it grows"
    assert after["background"][1] < after["background"][0] * 0.75, "not within the background's: it yields"
