"""The default concurrency control of a route: a window that seeks the upstream's throughput. Pure.

This is the specification; the route's window lives in Redis and is updated atomically by every
worker's ``RELEASE`` (``_SEEK_FN`` in ``batchq.storage.scripts``), which implements exactly
``SeekLimit.answer`` and ``SeekLimit.back_off`` with the constants below (written into its text).
``tests/integration/test_seek_parity.py`` feeds both the same answers and compares.

What it optimises is the route's throughput, not its latency. It learns in *rounds*: a round
keeps one window; it leaves out a window's worth of answers (until then they are the last
window's, or still find its queue ahead of them), then gathers the latencies of a window's worth
(a full turn of the queue), and the most requests seen in flight (how much of the window was
used). By Little's law a round's throughput is ``requests in flight
/ mean latency``. A probe changes the window for one round and is judged by the throughput's
*elasticity* against the round before it, ``ln(x1 / x0) / ln(n1 / n0)``: about 0 for a queue
past its knee (more in flight, only longer waits), ``K / (K + n)`` for a continuous-batching
engine (each step is slower, but serves more requests), 1 for a server with room to spare.

- ``hold``: a round at the window, ``base``. After ``HOLD_ROUNDS`` of them, when the window is
  used and below the cap, a probe ``up``: one round at ``GAIN x base``; after a probe up that was
  not kept, or at the cap while the latency is ``RISE`` above the lowest any round had (the cap
  may be past the knee), a probe ``down`` instead: one round at ``base / GAIN``. At once, when the base's
  latency has risen by ``RISE`` since the base was accepted (the upstream got slower, or busier
  with someone else's traffic), a probe down.
- Up is kept when its elasticity reaches ``ELASTIC``; down is kept when going down costs less
  than that (slow start's doublings and halvings: ``FAST_ELASTIC``, their larger step is less
  noisy). A kept probe probes on at once in the same direction (a run of kept probes is
  growth, or a descent to a knee below); otherwise the window goes back to its base. So it grows
  while throughput grows and holds at the knee, where more concurrency would only build a queue.
- Slow start (``fast``): at first, each probe up doubles the window instead, until a doubling is
  not kept; then each probe down halves it, until a halving is not kept (an overshoot comes back
  as fast as it went).
- ``back_off`` (a 429, or a server error): the window is multiplied by ``factor`` (a half, or
  ``ERROR_CUT``) at most once per ``CUT_EVERY_S``, then grows back by one per answer (doubling
  per round trip, as TCP's slow start) to ``RECOVER`` of where it was, and holds there: within a
  few round trips once the cause is gone. Cut after cut, it settles below what caused them.
The window stays within 1 and ``cap``. An outage changes nothing here (the breaker holds every
request back): when the upstream is back, the window is where it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

START = 64  # a route's window before any answer (at most its cap)
GAIN = 1.25  # a probe's step up (or down); slow start doubles
ELASTIC = 0.2  # the throughput elasticity a probe's larger window must show to be kept
FAST_ELASTIC = 0.15  # the same for slow start's doublings and halvings (a larger step: less noise in it)
MIN_SAMPLES = 8  # latencies in a round, at least
ROUND_SHARE = 1.0  # latencies in a round: this share of its window (at least MIN_SAMPLES)
HOLD_ROUNDS = 2  # rounds at the base between probes up (after slow start)
RISE = 1.3  # the base's latency this much above its level when accepted: probe down
USED = 0.7  # the base is used when this share of it was in flight at once (else probing up learns nothing)
THROTTLE_CUT, ERROR_CUT = 0.5, 0.8  # the window after a 429, after a server error (as a share)
CUT_EVERY_S = 1.0  # at most one cut per this many seconds
RECOVER = 0.9  # after a cut the window grows back, one per answer, to this share of the base before it


@dataclass(frozen=True)
class Seek:
    """A route's window and what the current round has gathered."""

    w: float  # the window
    base: float  # the window probes start from (and go back to)
    phase: str = "hold"  # hold | up | down
    fast: bool = True  # slow start: a probe up doubles
    lower: bool = False  # the last probe up was not kept: the next probe looks below the base
    skip: float = 0.0  # answers still to leave out of this round: a window's turn after a change
    mark: float = 0.0  # when the last of them came back: the round's clock starts there (0: not yet)
    count: int = 0  # latencies in this round
    total: float = 0.0  # their sum (seconds)
    top: float = 0.0  # the most requests seen in flight in this round
    ref_x: float = 0.0  # the throughput (answers/s) of the last round at the base
    ref_l: float = 0.0  # its mean latency
    ref_top: float = 0.0  # the most in flight in that round
    held_l: float = 0.0  # the base's latency when it was accepted (0: not yet measured)
    low_l: float = 0.0  # the lowest mean latency of any round (0: none yet)
    rounds: int = 0  # rounds at the base since the last probe
    ceiling: float = 0.0  # after a cut: the window grows back to here, one per answer (0: not recovering)
    cut: float = 0.0  # when the window was last cut


def elasticity(x1: float, x0: float, n1: float, n0: float) -> float:
    """How much of a relative change in requests in flight shows in throughput (0: none, 1: all)."""
    if x1 <= 0 or x0 <= 0 or n1 <= 0 or n0 <= 0 or n1 == n0:
        return 0.0
    return math.log(x1 / x0) / math.log(n1 / n0)


@dataclass(frozen=True)
class SeekLimit:
    cap: int
    w0: float  # the window before any answer

    def answer(self, state: Seek | None, seconds: float, inflight: float, now: float) -> Seek:
        """The window after a successful answer at ``now`` that took ``seconds`` (> 0), with
        ``inflight`` requests on the route when it came back (itself included)."""
        state = replace(state or Seek(w=self.w0, base=self.w0), top=max(state.top if state else 0.0, inflight))
        if state.ceiling > 0:  # recovering from a cut: one more per answer, back to where it was
            w = min(state.ceiling, state.w + 1)
            return _hold(replace(state, ceiling=0.0), w) if w >= state.ceiling else replace(state, w=w, base=w)
        if state.skip > 0 or state.mark <= 0:  # the window is still turning over: the last one's answers
            return replace(state, skip=state.skip - 1, mark=now)  # the round's clock starts at the last of them
        state = replace(state, count=state.count + 1, total=state.total + seconds)
        if state.count < max(MIN_SAMPLES, ROUND_SHARE * state.w) or now <= state.mark:
            return state
        rate, latency = state.count / (now - state.mark), state.total / state.count
        state = replace(state, low_l=min(state.low_l, latency) if state.low_l > 0 else latency)
        if state.phase == "up":
            return self._probed_up(state, rate, latency)
        if state.phase == "down":
            return self._probed_down(state, rate, latency)
        return self._held(state, rate, latency)

    def back_off(self, state: Seek | None, factor: float, now: float) -> Seek:
        """A 429 (``THROTTLE_CUT``) or a server error (``ERROR_CUT``): a smaller window, regrown by slow start."""
        state = state or Seek(w=self.w0, base=self.w0)
        if now - state.cut < CUT_EVERY_S:
            return state
        w = max(1.0, state.w * factor)
        return _hold(replace(state, fast=False, ceiling=max(w, RECOVER * state.base), cut=now), w)

    def _held(self, state: Seek, rate: float, latency: float) -> Seek:
        held_l = state.held_l if state.held_l > 0 else latency
        state = replace(state, ref_x=rate, ref_l=latency, ref_top=state.top, held_l=held_l, rounds=state.rounds + 1)
        if latency > RISE * held_l and state.base > 1:
            return self._probe_down(replace(state, fast=False))
        ready = state.fast or state.rounds >= HOLD_ROUNDS
        queued = state.base >= self.cap and latency > RISE * state.low_l  # at the cap, and slower than it can be
        if ready and (state.lower or queued) and state.base > 1:
            return self._probe_down(state)
        if ready and state.base < self.cap and state.top >= USED * state.base:
            return self._probe_up(state)
        return _round(replace(state, fast=state.fast and state.base < self.cap))

    def _probed_up(self, state: Seek, rate: float, latency: float) -> Seek:
        n1, n0 = min(state.w, state.top), min(state.base, state.ref_top)
        gain = elasticity(rate, state.ref_x, n1, n0) if n1 > n0 else 0.0
        if gain < (FAST_ELASTIC if state.fast else ELASTIC):  # the knee: go back, and look below it next
            return _hold(replace(state, lower=True), state.base)
        state = replace(state, base=state.w, ref_x=rate, ref_l=latency, ref_top=state.top, held_l=latency, lower=False)
        if state.base >= self.cap:
            return _hold(replace(state, fast=False), state.base)
        return self._probe_up(state)

    def _probed_down(self, state: Seek, rate: float, latency: float) -> Seek:
        n1, n0 = min(state.base, state.ref_top), min(state.w, state.top)
        loss = elasticity(state.ref_x, rate, n1, n0) if n1 > n0 else 1.0
        if loss >= (FAST_ELASTIC if state.fast else ELASTIC):  # the base is worth its latency: the new normal
            return _hold(replace(state, held_l=state.ref_l, lower=False, fast=False), state.base)
        state = replace(state, base=state.w, ref_x=rate, ref_l=latency, ref_top=state.top, held_l=latency)
        return self._probe_down(state) if state.base > 1 else _hold(state, state.base)

    def _probe_down(self, state: Seek) -> Seek:
        step = state.base / 2 if state.fast else state.base / GAIN
        return _round(replace(state, w=max(1.0, step), phase="down"))

    def _probe_up(self, state: Seek) -> Seek:
        step = 2 * state.base if state.fast else max(state.base + 1, state.base * GAIN)
        return _round(replace(state, w=min(float(self.cap), step), phase="up"))


def _hold(state: Seek, base: float) -> Seek:
    return _round(replace(state, w=base, base=base, phase="hold", rounds=0))


def _round(state: Seek) -> Seek:
    """A new round. It leaves out a window's worth of answers first: until every request in flight
    was sent under the new window, the answers are the old window's, or still find its queue."""
    return replace(state, skip=state.w, mark=0.0, count=0, total=0.0, top=0.0)
