"""Prometheus metrics, from two sides.

Worker side: each worker is one process with many threads, so a plain per-process
``CollectorRegistry`` is exact. ``WorkerMetrics`` holds the engine's counters, and
``start_worker_metrics_server`` serves them on the worker's own port.

API side: ``RedisStateCollector`` reads the shared state in Redis at scrape time (batches by
status, global counters, queue depth, per-route limiter state), so the numbers are the same
whichever API process answers and however many workers run.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from batchq.domain.status import TERMINAL, Status
from batchq.storage import keys

log = logging.getLogger("batchq.metrics")
M = TypeVar("M", Counter, Gauge)

# --- the global counters the Lua scripts keep in one Redis hash --------------------------------

STATS_KEY: str = getattr(keys, "STATS", f"{keys.PREFIX}:stats")
STAT_LINES_COMPLETED = "lines_completed"  # +1 per line stored with a response (batch 'completed' count)
STAT_LINES_FAILED = "lines_failed"  # +1 per line stored as an error (batch 'failed' count)
STAT_BATCHES_PREFIX = "batches_"  # + terminal status: +1 when a batch enters that status


def stat_batches(status: Status | str) -> str:
    """The stats field counting batches that entered ``status``: ``batches_completed`` and so on."""
    return STAT_BATCHES_PREFIX + Status(status).value


TERMINAL_ORDER: tuple[Status, ...] = tuple(s for s in Status if s in TERMINAL)
STAT_FIELDS: tuple[str, ...] = (
    STAT_LINES_COMPLETED,
    STAT_LINES_FAILED,
    *(stat_batches(s) for s in TERMINAL_ORDER),
)

# --- worker side ---------------------------------------------------------------------------------

OUTCOMES = ("ok", "http_error", "throttled", "timeout", "unreachable")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def attempt_outcome(status: int | None, error_code: str | None = None) -> str:
    """Classify one upstream attempt: an HTTP status, or no response and an error code."""
    if status is None:
        return "timeout" if error_code == "upstream_timeout" else "unreachable"
    if status == 429:
        return "throttled"
    return "ok" if status < 400 else "http_error"


class EngineMetrics(Protocol):
    """What the engine calls; ``WorkerMetrics`` and ``NULL`` both provide it."""

    def observe_attempt(self, route: str, outcome: str, seconds: float) -> None: ...

    def retried(self, route: str) -> None: ...

    def in_flight(self, route: str, delta: int) -> None: ...

    def line_stored(self, ok: bool) -> None: ...


class WorkerMetrics:
    """One worker process's metrics, in a registry of its own. Thread-safe; every method is cheap."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "batchq_upstream_request_seconds",
            "Duration of one upstream attempt (limiter wait excluded), by route and outcome.",
            ("route", "outcome"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("batchq_upstream_retries_total", "Upstream attempts retried.", ("route",), registry=r)
        self.throttled = Counter(
            "batchq_upstream_throttled_total", "Upstream attempts answered 429.", ("route",), registry=r
        )
        self.requests_in_flight = Gauge(
            "batchq_upstream_in_flight", "Upstream requests this worker has open.", ("route",), registry=r
        )
        self.lines = Counter("batchq_lines_total", "Lines this worker stored, by outcome.", ("outcome",), registry=r)
        self._lines_ok = self.lines.labels("completed")
        self._lines_failed = self.lines.labels("failed")
        # prometheus_client's labels() takes a lock and builds a tuple: children are cached here.
        self._attempts: dict[tuple[str, str], Histogram] = {}
        self._throttles: dict[str, Counter] = {}
        self._retried: dict[str, Counter] = {}
        self._open: dict[str, Gauge] = {}

    def observe_attempt(self, route: str, outcome: str, seconds: float) -> None:
        child = self._attempts.get((route, outcome))
        if child is None:
            child = self._attempts.setdefault((route, outcome), self.request_seconds.labels(route, outcome))
        child.observe(seconds)
        if outcome == "throttled":
            _child(self._throttles, self.throttled, route).inc()

    def retried(self, route: str) -> None:
        _child(self._retried, self.retries, route).inc()

    def in_flight(self, route: str, delta: int) -> None:
        _child(self._open, self.requests_in_flight, route).inc(delta)

    def line_stored(self, ok: bool) -> None:
        (self._lines_ok if ok else self._lines_failed).inc()


def _child(cache: dict[str, M], metric: M, route: str) -> M:
    child = cache.get(route)
    if child is None:
        child = cache.setdefault(route, metric.labels(route))
    return child


class NullMetrics:
    """Does nothing: for tests, and when metrics are off."""

    def observe_attempt(self, route: str, outcome: str, seconds: float) -> None:
        return None

    def retried(self, route: str) -> None:
        return None

    def in_flight(self, route: str, delta: int) -> None:
        return None

    def line_stored(self, ok: bool) -> None:
        return None


NULL = NullMetrics()


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """This process's worker metrics (created on first use)."""
    return WorkerMetrics()


_servers: dict[int, tuple[WSGIServer, threading.Thread]] = {}
_servers_lock = threading.Lock()


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0", metrics: WorkerMetrics | None = None) -> None:
    """Serve ``metrics`` (default: this process's) on ``addr:port`` in a daemon thread; port 0: off.

    Starting the same port twice is a no-op. A port already taken is logged, not raised: a worker
    without its metrics endpoint is better than no worker.
    """
    if port <= 0:
        return
    registry = (metrics or worker_metrics()).registry
    with _servers_lock:
        if port in _servers:
            return
        try:
            _servers[port] = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:
            log.error("metrics server not started", extra={"port": port, "reason": str(exc)})
            return
    log.info("metrics server started", extra={"port": port})


def stop_worker_metrics_servers() -> None:
    """Shut down every metrics server this process started (tests, orderly shutdown)."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def running_metrics_ports() -> list[int]:
    with _servers_lock:
        return sorted(_servers)


# --- API side ------------------------------------------------------------------------------------

STATUS_CHUNK = 250  # active batches per pipeline round trip (four reads each)


class RedisPipeline(Protocol):
    def smembers(self, name: str) -> Any: ...

    def hget(self, name: str, key: str) -> Any: ...

    def hgetall(self, name: str) -> Any: ...

    def llen(self, name: str) -> Any: ...

    def hlen(self, name: str) -> Any: ...

    def zcount(self, name: str, min: float | str, max: float | str) -> Any: ...

    def get(self, name: str) -> Any: ...

    def execute(self) -> list[Any]: ...


class RedisLike(Protocol):
    def pipeline(self, transaction: bool = ...) -> Any: ...


@dataclass
class TenantState:
    """One tenant at scrape time: its running batches' waiting and leased lines, and its counters."""

    waiting: int = 0  # line tasks not granted yet
    in_flight: int = 0  # lines leased by a worker now
    granted: float = 0.0
    stored: float = 0.0
    weight: float = 1.0


class RedisStateCollector:
    """A custom collector: reads the shared state in Redis at every scrape.

    Two round trips (three or more with over ``STATUS_CHUNK`` active batches). A Redis error
    yields ``batchq_up 0`` and nothing else, never an exception.
    """

    def __init__(
        self,
        client: RedisLike,
        routes: Sequence[str] = (),
        queues: Sequence[str] = (keys.LINE_QUEUE, keys.CONTROL_QUEUE),
    ) -> None:
        self.client = client
        self.routes = tuple(routes)
        self.queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._families())
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics scrape failed", extra={"reason": str(exc)})
            yield GaugeMetricFamily("batchq_up", "1 when the last scrape could read Redis.", value=0)
            return
        yield GaugeMetricFamily("batchq_up", "1 when the last scrape could read Redis.", value=1)
        yield from families

    def _families(self) -> Iterator[Metric]:
        now = time.time()
        pipe: RedisPipeline = self.client.pipeline(transaction=False)
        pipe.smembers(keys.ACTIVE_BATCHES)
        pipe.hgetall(STATS_KEY)
        for field in (keys.SCHED_GRANTED, keys.TENANT_LINES, keys.SCHED_WEIGHTS):
            pipe.hgetall(field)
        for queue in self.queues:
            for name in keys.queue_lists(queue):
                pipe.llen(name)
        for route in self.routes:
            pipe.zcount(keys.limit_inflight(route), now, "+inf")  # unexpired tokens: a dead worker's do not count
            pipe.get(keys.limit_notbefore(route))
            pipe.hget(keys.limit_health(route), "open_since")
            pipe.hget(keys.limit_health(route), "opened_total")
            for outcome in ROUTE_FAILURES:
                pipe.hget(keys.limit_health(route), outcome)
        replies = iter(pipe.execute())
        active = next(replies)
        stats = {_text(k): _number(v) for k, v in (next(replies) or {}).items()}
        granted, stored, weights = (next(replies) or {}, next(replies) or {}, next(replies) or {})
        depths = [sum(int(next(replies) or 0) for _ in keys.PRIORITY_SUFFIXES) for _ in self.queues]
        per_route = [[next(replies) for _ in range(4 + len(ROUTE_FAILURES))] for _ in self.routes]
        limits = [(int(row[0] or 0), _number(row[1])) for row in per_route]
        health = [(_number(row[2]), _number(row[3])) for row in per_route]
        failures = [[_number(v) for v in row[4:]] for row in per_route]

        statuses, tenants = self._active(active)
        _add_counters(tenants, granted, stored, weights)
        yield from _batch_families(statuses, stats)
        yield from _line_families(stats)
        yield from _tenant_families(tenants)
        yield _gauge(
            "batchq_queue_depth", "Tasks waiting in the Celery queue.", "queue", zip(self.queues, depths, strict=True)
        )
        yield _gauge(
            "batchq_upstream_in_flight",
            "Requests in flight to the route, all workers together.",
            "route",
            ((route, n) for route, (n, _) in zip(self.routes, limits, strict=True)),
        )
        yield _gauge(
            "batchq_upstream_throttled_until",
            "Unix time before which no request may start on the route (429 back-off); 0: none.",
            "route",
            ((route, t) for route, (_, t) in zip(self.routes, limits, strict=True)),
        )
        yield from _route_health_families(self.routes, health, now)
        yield _route_failures(self.routes, failures)

    def _active(self, active: Iterable[bytes | str] | None) -> tuple[dict[str, int], dict[str, TenantState]]:
        """Active batches by status, and each tenant's waiting and leased lines."""
        ids = sorted(_text(m) for m in (active or ()))
        counts: dict[str, int] = {}
        tenants: dict[str, TenantState] = {}
        for start in range(0, len(ids), STATUS_CHUNK):
            pipe: RedisPipeline = self.client.pipeline(transaction=False)
            for batch_id in ids[start : start + STATUS_CHUNK]:
                pipe.hget(keys.batch(batch_id), "status")
                pipe.hget(keys.batch(batch_id), "account")
                pipe.llen(keys.batch_pending(batch_id))
                pipe.hlen(keys.batch_leases(batch_id))
            replies = pipe.execute()
            for status, account, waiting, leased in zip(*(iter(replies),) * 4, strict=True):
                if status is None:
                    continue
                counts[_text(status)] = counts.get(_text(status), 0) + 1
                tenant = tenants.setdefault(_text(account or b""), TenantState())
                tenant.waiting += int(waiting or 0)
                tenant.in_flight += int(leased or 0)
        return counts, tenants


def _add_counters(tenants: dict[str, TenantState], granted: Any, stored: Any, weights: Any) -> None:
    for name, value in granted.items():
        tenants.setdefault(_text(name), TenantState()).granted = _number(value)
    for name, value in stored.items():
        tenants.setdefault(_text(name), TenantState()).stored = _number(value)
    for name, state in tenants.items():
        state.weight = _number(weights.get(name.encode(), b"1"))


def _tenant_families(tenants: dict[str, TenantState]) -> Iterator[Metric]:
    rows = sorted(tenants.items())
    stored = CounterMetricFamily("batchq_tenant_lines_stored", "Lines stored, per tenant (account).", labels=["tenant"])
    granted = CounterMetricFamily(
        "batchq_tenant_lines_granted",
        "Line tasks the scheduler let into the line queue, per tenant.",
        labels=["tenant"],
    )
    waiting = GaugeMetricFamily("batchq_tenant_lines_waiting", "Lines not granted yet, per tenant.", labels=["tenant"])
    in_flight = GaugeMetricFamily("batchq_tenant_lines_in_flight", "Lines a worker holds now.", labels=["tenant"])
    weight = GaugeMetricFamily("batchq_tenant_weight", "The tenant's scheduling weight.", labels=["tenant"])
    for name, t in rows:
        stored.add_metric([name], t.stored)
        granted.add_metric([name], t.granted)
        waiting.add_metric([name], t.waiting)
        in_flight.add_metric([name], t.in_flight)
        weight.add_metric([name], t.weight)
    yield from (stored, granted, waiting, in_flight, weight)
    yield GaugeMetricFamily(
        "batchq_lines_waiting",
        "Lines of running batches not granted yet, all tenants (what KEDA scales the workers on).",
        value=sum(t.waiting for _, t in rows),
    )


ROUTE_FAILURES = ("throttled", "error", "down")  # attempt outcomes counted per route in its health hash


def _route_failures(routes: Sequence[str], counts: list[list[float]]) -> Metric:
    family = CounterMetricFamily(
        "batchq_route_failed_attempts", "Attempts that got a 429, another error, or no answer, all workers.",
        labels=["route", "outcome"],
    )  # fmt: skip
    for route, row in zip(routes, counts, strict=True):
        for outcome, value in zip(ROUTE_FAILURES, row, strict=True):
            family.add_metric([route, outcome], value)
    return family


def _route_health_families(routes: Sequence[str], health: list[tuple[float, float]], now: float) -> Iterator[Metric]:
    """The routes' breakers: open (1) or closed (0), for how long, and how often they opened."""
    rows = list(zip(routes, health, strict=True))
    yield _gauge(
        "batchq_route_state", "1 while the route's breaker is open (upstream down), else 0.", "route",
        ((route, float(since > 0)) for route, (since, _) in rows),
    )  # fmt: skip
    yield _gauge(
        "batchq_route_open_seconds", "How long the route's breaker has been open; 0 when closed.", "route",
        ((route, max(0.0, now - since) if since else 0.0) for route, (since, _) in rows),
    )  # fmt: skip
    opened = CounterMetricFamily("batchq_route_opened", "Times the route's breaker opened.", labels=["route"])
    for route, (_, total) in rows:
        opened.add_metric([route], total)
    yield opened


def _batch_families(active: dict[str, int], stats: dict[str, float]) -> Iterator[Metric]:
    gauge = GaugeMetricFamily(
        "batchq_batches", "Batches by status: live ones now, terminal ones since the stats began.", labels=["status"]
    )
    for status in Status:
        value = stats.get(stat_batches(status), 0.0) if status in TERMINAL else float(active.get(status.value, 0))
        gauge.add_metric([status.value], value)
    yield gauge
    finished = CounterMetricFamily(
        "batchq_batches_finished_total", "Batches that reached a terminal status.", labels=["status"]
    )
    for status in TERMINAL_ORDER:
        finished.add_metric([status.value], stats.get(stat_batches(status), 0.0))
    yield finished


def _line_families(stats: dict[str, float]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "batchq_lines_completed_total", "Lines stored with a response.", value=stats.get(STAT_LINES_COMPLETED, 0.0)
    )
    yield CounterMetricFamily(
        "batchq_lines_failed_total", "Lines stored as an error.", value=stats.get(STAT_LINES_FAILED, 0.0)
    )
    yield CounterMetricFamily(
        "batchq_finalize_failures_total",
        "Finalize attempts that could not write a batch's result files (a full disk); each is retried.",
        value=stats.get(keys.STAT_FINALIZE_FAILURES, 0.0),
    )
    yield CounterMetricFamily(
        "batchq_orphan_files_removed_total",
        "Files on disk without a record (lost with Redis, or a crash before recording), removed.",
        value=stats.get(keys.STAT_ORPHANS_REMOVED, 0.0),
    )


def _gauge(name: str, doc: str, label: str, values: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values:
        family.add_metric([key], float(value))
    return family


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _number(value: bytes | str | float | None) -> float:
    if value is None:
        return 0.0
    try:
        return float(value)
    except ValueError:
        return 0.0


def api_registry(
    client: RedisLike, routes: Sequence[str] = (), queues: Sequence[str] = (keys.LINE_QUEUE, keys.CONTROL_QUEUE)
) -> CollectorRegistry:
    """A registry holding only the Redis state collector (what the API's ``/metrics`` serves)."""
    registry = CollectorRegistry()
    registry.register(RedisStateCollector(client, routes, queues))
    return registry


def render_api_metrics(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition body and its content type. Blocking (reads Redis): call it off the event loop."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
