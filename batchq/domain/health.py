"""Route health: which outcomes mean an upstream is down, and how long a line waits for it. Pure.

A route's circuit breaker lives in Redis, shared by every worker (``batchq.storage.limits`` and the
``acquire``/``release`` steps in ``scripts.py``). ``BreakerPolicy.failures`` consecutive "down"
outcomes (no response at all, or 502/503/504) open it. While it is open no request is sent on the
route: one probe a ``probe_s`` across all workers asks whether it is back, and the first answer
closes it. A line waiting for an open route spends no attempt; it gives up only once the route has
been open for ``max_outage_s`` or its batch has expired. Only ``waiters`` lines wait in worker
threads (they send the probes); the others are ``Deferred``: back to the scheduler, which parks
their batch while the route is down, so other routes' lines get the threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DOWN_STATUS = frozenset({502, 503, 504})


class RouteState(StrEnum):
    CLOSED = "closed"  # requests flow
    OPEN = "open"  # the upstream is down: only probes go out


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5  # consecutive down outcomes that open the breaker; 0: no breaker
    probe_s: float = 1.0  # one probe per route per this many seconds while open
    max_outage_s: float = 1800.0  # a waiting line gives up when the route has been open this long
    waiters: int = 4  # lines that wait for an open route in a worker thread, across all workers

    @property
    def enabled(self) -> bool:
        return self.failures > 0


@dataclass(frozen=True)
class Breaker:
    """A route's breaker as ``RELEASE`` keeps it in Redis (``record_health`` in ``scripts.py``
    implements ``record``; ``test_breaker_parity`` keeps the two equal)."""

    failures: int = 0  # down outcomes in a row
    open_since: float | None = None  # None: closed

    @property
    def state(self) -> RouteState:
        return RouteState.CLOSED if self.open_since is None else RouteState.OPEN

    def record(self, outcome: str, now: float, policy: BreakerPolicy) -> tuple[Breaker, bool]:
        """The breaker after an attempt's ``outcome`` (ok | throttled | error | down), and whether
        it changed state: opened by the ``policy.failures``-th down outcome in a row, closed by any
        answer."""
        if not policy.enabled:
            return self, False
        if outcome == "down":
            failures = self.failures + 1
            opens = self.open_since is None and failures >= policy.failures
            return Breaker(failures, now if opens else self.open_since), opens
        return Breaker(), self.open_since is not None


class RouteDown(Exception):
    """A line stopped waiting for a route that stayed down too long (or its batch expired)."""

    def __init__(self, route: str, open_for_s: float) -> None:
        super().__init__(outage_message(route, open_for_s))
        self.route = route
        self.open_for_s = open_for_s


class Deferred(Exception):
    """A line stands aside: its route is down and enough lines already wait for it (they probe).
    It goes back to its batch's waiting lines, where it holds no worker thread; the scheduler grants
    that batch nothing more until the route is back."""

    def __init__(self, route: str) -> None:
        super().__init__(f"The upstream route '{route}' is down: the line waits for it in the scheduler.")
        self.route = route


def is_down(status: int | None) -> bool:
    """The upstream did not answer (connection failure, timeout) or its gateway says it is gone."""
    return status is None or status in DOWN_STATUS


def gives_up(open_since: float, now: float, policy: BreakerPolicy, deadline: float | None = None) -> bool:
    """A line waiting for an open route stops waiting: the outage lasted too long, or its batch expired."""
    return now - open_since >= policy.max_outage_s or (deadline is not None and now >= deadline)


def latency_sample(seconds: float, status: int | None, body: object) -> float:
    """What the gradient window learns from one attempt: its latency per output token when the
    answer says how many (LLM latency grows with the output's length; this takes that out), the
    plain latency otherwise, and nothing (0) from anything but a 2xx answer."""
    if status is None or not 200 <= status < 300:
        return 0.0
    usage = body.get("usage") if isinstance(body, dict) else None
    tokens = _output_tokens(usage) if isinstance(usage, dict) else 0
    return seconds / tokens if tokens > 0 else seconds


def _output_tokens(usage: dict[str, object]) -> int:
    value = usage.get("completion_tokens", usage.get("output_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def outage_message(route: str, open_for_s: float) -> str:
    return f"The upstream route '{route}' has been unreachable for {open_for_s:.0f} s."
