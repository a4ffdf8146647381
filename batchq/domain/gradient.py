"""The gradient concurrency limit of a route: how its window follows the latency requests see. Pure.

This is the specification; the route's window lives in Redis and is updated atomically by every
worker's ``RELEASE`` (``_GRADIENT_FN`` in ``batchq.storage.scripts``), which implements exactly
``GradientLimit.update`` with the constants below (passed to it as arguments).
``tests/integration/test_gradient_parity.py`` feeds both the same latencies and compares.

- ``short``: a moving average of the latencies (per output token when the answer says how many),
  each new one weighing ``SMOOTHING``.
- ``base``: the unloaded latency. It follows a lower ``short`` (by ``BASE_FOLLOW`` a step) and
  drifts up by ``DRIFT_PER_S`` a second, so a faster period does not pin it low forever.
- While ``short`` is within ``tolerance x base`` the window grows: by one per answer in slow start
  (doubling per round trip); after the first back-off by ``1 / w`` per answer (one per window),
  but only while ``short`` is within the lower ``GROW_BAND`` of the tolerance, and it holds above
  that (a Vegas-style band: growing right up to the tolerance would keep the queue at its edge).
- Above it the window shrinks in proportion (``tolerance x base / short``), by at most
  ``1 - min_cut`` at once and at most once per ``short`` seconds (one latency: the effect of a cut
  shows only after it).
- A cut that would go below the starting window ``w0`` means even a few requests see this
  latency: it is the upstream's own (slower requests, another model), not a queue of ours. It
  becomes the new base (``short / tolerance``) and the window goes back to ``w0``.
The window stays within 1 and ``cap``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SMOOTHING = 0.05  # weight of the newest latency in ``short``
DRIFT_PER_S = 0.0002  # base's upward drift: about 1 % a minute
BASE_FOLLOW = 0.2  # how fast base follows a lower short
GROW_BAND = 0.5  # after slow start, grow only while short is within this part of the tolerance
START = 8  # a route's window before its first latencies are known (at most its cap)
NORMAL_CUT, BACKGROUND_CUT = 0.8, 0.5  # the most one back-off takes: a fifth; half when yielding first
BACKGROUND_TOLERANCE = 1.03  # a background route's latency inflation, at most


@dataclass(frozen=True)
class Gradient:
    """A route's window and what it has learnt of the latency."""

    w: float
    base: float
    short: float
    cut: float = 0.0  # when the window last shrank
    at: float = 0.0  # when it was last updated
    slow_start: bool = True


@dataclass(frozen=True)
class GradientLimit:
    cap: int
    w0: float  # the window before any feedback
    tolerance: float = 1.05  # latency inflation allowed above the unloaded latency
    min_cut: float = 0.8  # the smallest factor one back-off multiplies the window by

    def update(self, state: Gradient | None, latency: float, now: float) -> Gradient:
        """The window after an answer that took ``latency`` seconds (> 0)."""
        if state is None:
            state = Gradient(w=self.w0, base=latency, short=latency, at=now)
        short = state.short + SMOOTHING * (latency - state.short)
        base = state.base * (1 + DRIFT_PER_S * max(0.0, now - state.at))
        if short < base:
            base += BASE_FOLLOW * (short - base)
        moved = replace(state, short=short, base=base, at=now)
        if short > self.tolerance * base:
            return self._back_off(moved, now) if now - state.cut >= short else moved
        if state.slow_start:
            return replace(moved, w=min(self.cap, state.w + 1.0))
        if short <= (1 + (self.tolerance - 1) * GROW_BAND) * base:
            return replace(moved, w=min(self.cap, state.w + 1.0 / state.w))
        return moved  # between the two: hold (TCP Vegas' alpha-beta band), so the queue stays short

    def _back_off(self, state: Gradient, now: float) -> Gradient:
        target = state.w * max(self.min_cut, self.tolerance * state.base / state.short)
        base = state.base
        if target < self.w0:
            base, target = state.short / self.tolerance, self.w0
        return replace(state, w=max(1.0, target), base=base, cut=now, slow_start=False)
