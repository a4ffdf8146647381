"""What the operators page reads: ``read_overview`` plus each route's limiter state."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from batchq.domain.routing import Route
from batchq.observability.metrics import STAT_LINES_COMPLETED, STAT_LINES_FAILED
from batchq.observability.overview import Overview, read_overview
from batchq.runtime import Runtime
from batchq.storage import keys

HISTORY_S = 600.0  # the tenants' chart spans the last ten minutes
MIN_STEP_S = 1.0


@dataclass(frozen=True)
class RouteState:
    name: str
    in_flight: int
    limit: int  # configured max_in_flight (0: none)
    window: float | None  # the AIMD window now (halved on 429s); None: never lowered
    throttled_for_s: float  # seconds of 429 back-off left
    throttled: int = 0  # attempts answered 429, all workers, since the counters began
    errors: int = 0  # attempts that got another error or no answer at all
    down: bool = False  # the route's breaker is open: the upstream is not answering


@dataclass(frozen=True)
class Totals:
    completed: int
    failed: int
    stored: dict[str, float]  # lines stored per tenant since the counters began, every tenant


class History:
    """(time, lines stored per tenant) samples of this process, for the tenants' lines/s chart."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, float]]] = deque()
        self._lock = threading.Lock()

    def add(self, at: float, stored: dict[str, float]) -> list[tuple[float, dict[str, float]]]:
        """Keep ``stored`` (lines stored per tenant, all tenants) at most once a second; all samples kept."""
        with self._lock:
            if not self.samples or at - self.samples[-1][0] >= MIN_STEP_S:
                self.samples.append((at, stored))
            while self.samples and self.samples[0][0] < at - HISTORY_S:
                self.samples.popleft()
            return list(self.samples)


def snapshot(rt: Runtime) -> Overview:
    return read_overview(rt.redis, [route.name for route in rt.settings.routes()])


def route_states(rt: Runtime, in_flight: dict[str, int]) -> tuple[list[RouteState], Totals]:
    routes = rt.settings.routes()
    pipe = rt.redis.pipeline(transaction=False)
    for route in routes:
        pipe.hget(keys.limit_window(route.name), "w")
        pipe.get(keys.limit_notbefore(route.name))
        pipe.hmget(keys.limit_health(route.name), ["throttled", "error", "down", "open_since"])
    pipe.hmget(keys.STATS, [STAT_LINES_COMPLETED, STAT_LINES_FAILED])
    pipe.hgetall(keys.TENANT_LINES)
    replies = pipe.execute()
    now = time.time()
    rows = [replies[3 * i : 3 * i + 3] for i in range(len(routes))]
    states = [_state(r, in_flight, row[0], row[1], row[2], now) for r, row in zip(routes, rows, strict=True)]
    completed, failed = (int(v or 0) for v in replies[-2])
    stored = {k.decode(): float(v) for k, v in replies[-1].items()}
    return states, Totals(completed, failed, stored)


def _state(
    route: Route,
    in_flight: dict[str, int],
    window: bytes | None,
    notbefore: bytes | None,
    health: list[bytes | None],
    now: float,
) -> RouteState:
    throttled, error, down, open_since = health
    return RouteState(
        name=route.name, in_flight=in_flight.get(route.name, 0), limit=route.max_in_flight,
        window=float(window) if window else None, throttled_for_s=max(0.0, float(notbefore or 0) - now),
        throttled=int(throttled or 0), errors=int(error or 0) + int(down or 0), down=open_since is not None,
    )  # fmt: skip
