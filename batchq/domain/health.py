"""Route health: which outcomes mean an upstream is down, and how long a line waits for it. Pure.

A route's circuit breaker lives in Redis, shared by every worker (``batchq.storage.limits`` and the
``acquire``/``release`` steps in ``scripts.py``). ``BreakerPolicy.failures`` consecutive "down"
outcomes (no response at all, or 502/503/504) open it. While it is open no request is sent on the
route: one probe a ``probe_s`` across all workers asks whether it is back, and the first answer
closes it. A line waiting for an open route spends no attempt; it gives up only once the route has
been open for ``max_outage_s`` or its batch has expired.
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

    @property
    def enabled(self) -> bool:
        return self.failures > 0


class RouteDown(Exception):
    """A line stopped waiting for a route that stayed down too long (or its batch expired)."""

    def __init__(self, route: str, open_for_s: float) -> None:
        super().__init__(outage_message(route, open_for_s))
        self.route = route
        self.open_for_s = open_for_s


def is_down(status: int | None) -> bool:
    """The upstream did not answer (connection failure, timeout) or its gateway says it is gone."""
    return status is None or status in DOWN_STATUS


def gives_up(open_since: float, now: float, policy: BreakerPolicy, deadline: float | None = None) -> bool:
    """A line waiting for an open route stops waiting: the outage lasted too long, or its batch expired."""
    return now - open_since >= policy.max_outage_s or (deadline is not None and now >= deadline)


def outage_message(route: str, open_for_s: float) -> str:
    return f"The upstream route '{route}' has been unreachable for {open_for_s:.0f} s."
