"""The throughput-seeking window on a made-up clock, against models of the upstreams it meets.

Each model is driven by a client that keeps ``floor(w)`` requests in flight (a batch always has
more lines waiting), ticking a millisecond at a time; throughput is compared with the same model
driven at a fixed window in the same simulation.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from dataclasses import dataclass, field

import pytest

from batchq.domain.throughput import CUT_EVERY_S, ERROR_CUT, THROTTLE_CUT, Seek, SeekLimit

TICK = 0.001


JITTER = random.Random(5)  # every model's service times vary by up to 10 %: no lockstep waves


def jittered(seconds: float) -> float:
    return seconds * JITTER.uniform(0.9, 1.1)


class Fixed:
    """Every request takes ``latency`` seconds (give or take), however many are in flight."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.due: list[tuple[float, float]] = []

    def send(self, now: float) -> None:
        heapq.heappush(self.due, (now + jittered(self.latency), now))

    def done(self, now: float) -> list[float]:
        out = []
        while self.due and self.due[0][0] <= now:
            out.append(heapq.heappop(self.due)[1])
        return out


class Queue:
    """vLLM-like: ``slots`` served at once for ``service`` seconds each, the rest wait in order."""

    def __init__(self, slots: int, service: float) -> None:
        self.slots, self.service = slots, service
        self.waiting: list[float] = []
        self.serving: list[tuple[float, float]] = []

    def send(self, now: float) -> None:
        self.waiting.append(now)

    def done(self, now: float) -> list[float]:
        out = []
        while self.serving and self.serving[0][0] <= now:
            out.append(heapq.heappop(self.serving)[1])
        while self.waiting and len(self.serving) < self.slots:
            heapq.heappush(self.serving, (now + jittered(self.service), self.waiting.pop(0)))
        return out


class Engine:
    """Continuous batching: a request needs ``steps`` decode steps; one step of the whole batch
    takes ``step x (1 + n / k)`` with n in service (at most ``most``; the rest wait)."""

    def __init__(self, steps: int = 50, step: float = 0.004, k: int = 32, most: int = 256) -> None:
        self.steps, self.step, self.k, self.most = steps, step, k, most
        self.waiting: list[float] = []
        self.serving: list[list[float]] = []  # [steps left, sent at]
        self.next_step = 0.0

    def send(self, now: float) -> None:
        self.waiting.append(now)

    def done(self, now: float) -> list[float]:
        out: list[float] = []
        while self.next_step <= now:
            if not self.serving and not self.waiting:
                self.next_step = now + TICK
                break
            for request in self.serving:
                request[0] -= 1
            out += [sent for left, sent in self.serving if left <= 0]
            self.serving = [r for r in self.serving if r[0] > 0]
            while self.waiting and len(self.serving) < self.most:
                self.serving.append([float(round(jittered(self.steps))), self.waiting.pop(0)])
            self.next_step += self.step * (1 + len(self.serving) / self.k)
        return out


@dataclass
class Run:
    """Completions per second over the measured part, and the window at every tenth of a second."""

    rate: float
    windows: list[float] = field(default_factory=list)
    state: Seek | None = None


def drive(model: Fixed | Queue | Engine, limit: SeekLimit | None, cap: int, seconds: float, warmup: float) -> Run:
    """Keep floor(w) requests in flight (``cap`` when ``limit`` is None) for ``seconds``."""
    JITTER.seed(5)
    state: Seek | None = None
    inflight, counted, windows = 0, 0, []
    ticks = round(seconds / TICK)
    for i in range(ticks):
        now = i * TICK
        for sent in model.done(now):
            if limit is not None:
                state = limit.answer(state, now - sent, inflight, now)
            inflight -= 1
            counted += now >= warmup
        w = cap if limit is None else math.floor(state.w if state else limit.w0)
        while inflight < w:
            model.send(now)
            inflight += 1
        if i % 100 == 0:
            windows.append(float(w))
    return Run(counted / (seconds - warmup), windows, state)


def test_a_continuous_batching_engine_is_driven_as_hard_as_a_fixed_window_at_the_cap() -> None:
    seeking = drive(Engine(), SeekLimit(cap=128, w0=32), 128, 40, 10)
    fixed = drive(Engine(), None, 128, 40, 10)
    assert seeking.rate >= 0.95 * fixed.rate, (seeking.rate, fixed.rate)
    settled = seeking.windows[100:]
    assert min(settled) >= 64 and statistics.median(settled) >= 100  # the latency doubles at 32: it goes on


def test_a_queueing_upstream_is_held_near_its_knee_at_full_throughput() -> None:
    run = drive(Queue(32, 0.2), SeekLimit(cap=256, w0=32), 256, 60, 20)
    assert run.rate >= 0.95 * 160
    settled = run.windows[200:]
    assert 32 <= statistics.median(settled) <= 56, statistics.median(settled)  # the queue stays short
    assert min(settled) >= 24 and max(settled) <= 80, (min(settled), max(settled))  # a probe either side


def test_room_to_spare_fills_the_cap_within_a_few_round_trips() -> None:
    run = drive(Fixed(0.5), SeekLimit(cap=128, w0=32), 128, 20, 0)
    assert run.windows[30] == 128  # 3 s: 32 to 128 is two doublings
    assert run.rate >= 0.95 * 256 * 19 / 20  # ramping up costs less than 5 % of the first 20 s


def test_when_the_upstream_gets_busier_the_window_follows_it_down() -> None:
    """A queue of 64 slots that loses half of them (someone else's traffic takes them)."""
    model = Queue(64, 0.2)
    limit, state, inflight = SeekLimit(cap=256, w0=32), None, 0
    for i in range(round(80 / TICK)):
        now = i * TICK
        if now >= 40:
            model.slots = 32
        for sent in model.done(now):
            state = limit.answer(state, now - sent, inflight, now)
            inflight -= 1
        while inflight < math.floor(state.w if state else limit.w0):
            model.send(now)
            inflight += 1
        if i == round(39 / TICK):
            assert state is not None and 64 <= state.base <= 128, state
    assert state is not None and 32 <= state.base <= 64, state


def test_a_429_halves_the_window_once_a_second_and_it_grows_back_one_per_answer() -> None:
    limit = SeekLimit(cap=128, w0=32)
    state = Seek(w=100, base=100, fast=False, ref_l=0.2, ref_top=100, held_l=0.2)
    cut = limit.back_off(state, THROTTLE_CUT, 10.0)
    assert (cut.w, cut.base, cut.ceiling) == (50, 50, 90)
    assert limit.back_off(cut, THROTTLE_CUT, 10.0 + CUT_EVERY_S / 2) == cut  # the same burst of 429s
    assert limit.back_off(cut, ERROR_CUT, 11.0 + CUT_EVERY_S).w == 40
    now, state = 10.0, cut
    while state.ceiling > 0:  # answers of 0.2 s, the window fully used
        now += 0.2 / state.w
        state = limit.answer(state, 0.2, state.w, now)
    assert state.w == 90 and state.phase == "hold"  # a little below where it was, and no further
    assert now - 10.0 < 0.5  # within about two round trips
    for _ in range(10):  # cut after cut: it settles below what caused them
        state = limit.back_off(state, THROTTLE_CUT, now := now + 2)
        while state.ceiling > 0:
            state = limit.answer(state, 0.2, state.w, now)
    assert state.w < 40


def test_a_round_leaves_out_a_window_of_answers_before_it_counts() -> None:
    limit = SeekLimit(cap=128, w0=32)
    state = Seek(w=40, base=32, phase="up", skip=40)
    for i in range(40):
        state = limit.answer(state, 0.2, 40, 5.0 + i / 200)
    assert (state.skip, state.count, state.top, state.mark) == (0, 0, 40, 5.0 + 39 / 200)
    assert limit.answer(state, 0.2, 40, 5.2).count == 1


def test_the_window_stays_within_one_and_the_cap() -> None:
    rng = random.Random(7)
    limit = SeekLimit(cap=64, w0=32)
    state: Seek | None = None
    now = 0.0
    for _ in range(20_000):
        now += rng.expovariate(200)
        if rng.random() < 0.01:
            state = limit.back_off(state, rng.choice([THROTTLE_CUT, ERROR_CUT]), now)
        else:
            seconds = rng.lognormvariate(-1.5, 1.0)
            state = limit.answer(state, seconds, rng.randint(1, 80), now)
        assert 1 <= state.w <= 64 and 1 <= state.base <= 64


@pytest.mark.parametrize("slots", [4, 32, 100])
def test_queues_of_any_size_are_found(slots: int) -> None:
    run = drive(Queue(slots, 0.1), SeekLimit(cap=256, w0=32), 256, 40, 15)
    assert run.rate >= 0.9 * slots / 0.1
    settled = run.windows[150:]
    assert statistics.median(settled) <= 1.6 * slots + 8, (slots, statistics.median(settled))
