"""What a route learns from its 429s: how long to wait, and the pace it is held to. Pure.

A 429 is a reason to wait, never a reason to fail a line: the line spends no attempt on it
(``batchq.execution.upstream``). This is the specification of what the route learns, shared by
every worker in Redis: ``RELEASE`` (``_PACE_FN`` in ``batchq.storage.scripts``) implements
``Pace.throttled`` and ``Pace.answered``, and ``ACQUIRE`` spaces requests by ``Pace.rate_at``
(``tests/integration/test_pace_parity.py`` keeps them equal).

- A 429 that says how long (``Retry-After``, or the ``x-ratelimit-reset-*`` of the exhausted
  limit) holds the whole route back that long.
- One that does not (a gateway's fixed window, LiteLLM's for one) holds it back ``FIRST_WAIT_S``,
  then twice as long after each 429 in a row, up to ``MAX_WAIT_S``: probing for the window's turn.
- Either way the route learns the pace at which the 429s stop: the answers that got through
  between the first 429s of two bursts, over the time between them (a fixed window of N per
  minute gives N per minute), when the first was a long burst (``LONG_BURST`` 429s in a row: a
  limit spent, not a passing refusal; a pace learnt from those would only follow the route's own
  slowed pace down). Requests are then spaced to it, and the pace creeps up
  (``CREEP_S``: up to twice as fast after that long without a 429), so a raised limit is found.
- A 429 to a request sent before the last 429 was recorded belongs to the same burst: it
  teaches nothing new and holds nothing back again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

FIRST_WAIT_S = 0.5  # the route's wait after a 429 that says nothing of how long
MAX_WAIT_S = 8.0  # the longest such wait (429s in a row double it): how late a window's turn is seen
MIN_PERIOD_S = 1.0  # the shortest period a pace is learnt over
CREEP_S = 120.0  # without a 429 for this long, the pace is twice the learnt one (and no more)
LONG_BURST = 3  # 429s in a row that show a hard limit (a window spent), not a passing refusal


@dataclass(frozen=True)
class Pace:
    rate: float = 0.0  # requests per second the route is held to (0: none learnt)
    since: float = 0.0  # when the current period began: the first 429 of the last burst (0: none yet)
    answers: int = 0  # answers that got through since then
    wait: float = 0.0  # the last wait after a 429 without a hint
    last: float = 0.0  # when the last 429 was recorded
    streak: int = 0  # 429s in a row in the current burst

    def answered(self) -> Pace:
        """An answer got through (only counted once a 429 has been seen)."""
        return replace(self, answers=self.answers + 1) if self.since > 0 else self

    def throttled(self, hint: float, sent_at: float, now: float) -> tuple[Pace, float]:
        """The route after a 429 to a request sent at ``sent_at``, with ``hint`` seconds to wait
        (0: none given), and how long it holds every request back from now (0: not again)."""
        if sent_at < self.last:
            return self, 0.0
        burst = self.answers > 0 or self.since == 0  # the first 429 since answers got through
        rate = self.rate
        if burst and self.since > 0 and self.streak >= LONG_BURST and now - self.since >= MIN_PERIOD_S:
            rate = self.answers / (now - self.since)
        wait = self.wait
        if hint <= 0:
            wait = FIRST_WAIT_S if burst or wait <= 0 else min(MAX_WAIT_S, 2 * wait)
        since, streak = (now, 1) if burst else (self.since, self.streak + 1)
        return Pace(rate, since, 0, wait, now, streak), hint if hint > 0 else wait

    def rate_at(self, now: float) -> float:
        """The pace requests are spaced to now (0: none)."""
        if self.rate <= 0:
            return 0.0
        return self.rate * min(2.0, 1 + max(0.0, now - self.last) / CREEP_S)
