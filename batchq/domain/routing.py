"""Which upstream serves a request: by endpoint, and optionally by ``body.model``.

``BATCHQ_UPSTREAMS`` is a JSON list of ``Route`` objects, tried in order; the first whose
``endpoints`` and ``models`` both match (an empty list matches anything) serves the request.
Without it there is one route built from ``BATCHQ_UPSTREAM_URL`` and its sibling settings.
Every route has its own distributed concurrency cap and rate limit, shared by all workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Route(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str
    api_key: str | None = None
    endpoints: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    max_in_flight: int = Field(default=256, ge=0)  # 0: no cap
    rpm: int = Field(default=0, ge=0)  # requests per minute; 0: no limit
    timeout_s: float | None = Field(default=None, gt=0)
    # How the route's concurrency adapts (None: BATCHQ_UPSTREAM_MODE): throughput (seek the most
    # throughput: batchq.domain.throughput), aimd (halve on 429s), gradient (also back off while
    # latency is above tolerance x the unloaded latency), fixed (max_in_flight).
    mode: Literal["throughput", "aimd", "gradient", "fixed"] | None = None
    tolerance: float | None = Field(default=None, ge=1.0, le=10.0)  # None: BATCHQ_UPSTREAM_TOLERANCE
    # background: a server shared with interactive users; batch traffic takes only the spare capacity
    # (gradient with a tolerance of at most 1.03, and cuts of up to half: it yields first).
    priority: Literal["normal", "background"] = "normal"
    # The engine's own priority, sent as "priority" in every request's body (unless the line sets
    # its own), so the engine serves interactive requests first: vLLM (--scheduling-policy
    # priority) serves lower values first, so a batch route sends a positive one (10); SGLang
    # (--enable-priority-scheduling) serves higher values first, so a negative one (-10). None: not sent.
    engine_priority: int | None = None

    @field_validator("url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")

    def matches(self, endpoint: str, model: str | None) -> bool:
        endpoint_ok = not self.endpoints or endpoint in self.endpoints
        return endpoint_ok and (not self.models or model in self.models)

    @property
    def limited(self) -> bool:
        return self.max_in_flight > 0 or self.rpm > 0


def route_for(routes: list[Route], endpoint: str, model: object) -> Route | None:
    name = model if isinstance(model, str) else None
    return next((r for r in routes if r.matches(endpoint, name)), None)


def batch_route(routes: list[Route], endpoint: str, models: Iterable[str | None]) -> str:
    """The one route every line of a batch goes to ('' when its lines go to several, or none):
    the scheduler holds such a batch back while that route is down."""
    names = {route.name if route else "" for route in (route_for(routes, endpoint, m) for m in models)}
    return names.pop() if len(names) == 1 else ""


@dataclass(frozen=True)
class Release:
    """How an attempt that held a slot on ``route`` ended, for the route's limiter."""

    route: Route
    token: str | None
    outcome: str  # ok | throttled | error | down | none (already recorded: nothing to give back or count)
    retry_after: float | None = None
    latency_s: float = 0.0  # the attempt's latency, per output token when the answer says how many; 0: none
    seconds: float = 0.0  # the attempt's latency as it is (a 2xx answer's; 0: none)
    sent_at: float = 0.0  # when the attempt was sent (epoch seconds)
