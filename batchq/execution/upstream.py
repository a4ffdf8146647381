"""The HTTP client for the OpenAI-compatible upstreams, and the one place their errors are translated.

Each worker process owns one asyncio event loop, in a daemon thread, with one pooled httpx2
transport (driven by aiohttp) per route. Celery's task threads hand their requests to that loop and
wait: the threads only block, and all sockets are driven by one loop (docs/performance.md has
the measurements behind this choice). Before each attempt a request takes a slot from the
route's distributed limiter (``batchq.storage.limits``) and gives it back after; ``send_on``
lets the line runner fold the first take and the last give-back into its own Redis calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import httpx2
import orjson

from batchq.config import Settings
from batchq.domain.health import RouteDown, RouteState, is_down, latency_sample
from batchq.domain.retry import (
    RetryPolicy,
    backoff_s,
    is_retryable_status,
    parse_retry_after,
    rate_limit_wait,
    should_retry,
)
from batchq.domain.routing import Release, Route, route_for
from batchq.execution.aiohttp_transport import AiohttpTransport
from batchq.observability.metrics import NULL, EngineMetrics, attempt_outcome
from batchq.storage import clock
from batchq.storage.limits import Keepalive
from batchq.storage.lua import Call

T = TypeVar("T")
Heartbeat = Callable[[], None] | None


@dataclass(frozen=True)
class Outcome:
    """What the upstream finally said: a response (any status), or no response at all."""

    status: int | None
    body: Any = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1


class Limiter(Protocol):
    def acquire(
        self, route: Route, deadline: float | None = None, keepalive: Keepalive | None = None, may_defer: bool = True
    ) -> str | None:
        """Wait for a slot; raises ``RouteDown`` when the route stayed down too long."""

    def release(self, done: Release) -> RouteState:
        """Give the slot back, record the outcome in the route's health; returns the route's state."""

    def acquire_call(self, route: Route) -> tuple[str, Call] | None:
        """A token and the script call that would take a slot for it, to fold into another script."""

    def release_call(self, done: Release) -> Call | None:
        """The script call that would give ``done``'s slot back, to fold into another script."""

    def granted(self, route: Route, token: str) -> None:
        """An ACQUIRE folded into another script granted ``token``: keep it alive until released."""

    def renew_held(self) -> int:
        """The worker's heartbeat: the slots held by this process live on; returns how many."""


class NoLimiter:
    def acquire(
        self, route: Route, deadline: float | None = None, keepalive: Keepalive | None = None, may_defer: bool = True
    ) -> str | None:
        return None

    def release(self, done: Release) -> RouteState:
        return RouteState.CLOSED

    def acquire_call(self, route: Route) -> tuple[str, Call] | None:
        return None

    def release_call(self, done: Release) -> Call | None:
        return None

    def granted(self, route: Route, token: str) -> None:
        return None

    def renew_held(self) -> int:
        return 0


def join_url(base: str, path: str) -> str:
    """``base`` + ``path``, without doubling a ``/v1`` that both carry."""
    base = base.rstrip("/")
    if base.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
        path = path[3:]
    return base + path


def policy_from(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.upstream_max_attempts,
        max_total_s=settings.upstream_max_retry_time_s,
        max_throttled_s=settings.upstream_max_throttled_s,
        base_s=settings.upstream_backoff_base_s,
        max_backoff_s=settings.upstream_backoff_max_s,
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (15-30 % less CPU per request here), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` blocks the caller until done."""

    def __init__(self) -> None:
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="batchq-upstream", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], heartbeat: Callable[[], None] | None = None, every: float = 30) -> T:
        """Run ``coro`` on the loop and wait for it, calling ``heartbeat`` every ``every`` seconds."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return future.result(timeout=every)
            except concurrent.futures.TimeoutError:
                if heartbeat is not None:
                    heartbeat()


class Upstream:
    def __init__(
        self,
        settings: Settings,
        limiter: Limiter | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.routes = settings.routes()
        self.policy = policy_from(settings)
        self.limiter = limiter or NoLimiter()
        self.rng = rng or random.Random()
        self.metrics = metrics or NULL
        self._transport = transport
        self._transports: dict[str, httpx2.AsyncBaseTransport] = {}
        self._loop: LoopThread | None = None
        self._lock = threading.Lock()

    def route(self, path: str, model: object) -> Route | None:
        return route_for(self.routes, path, model)

    @staticmethod
    def payload(route: Route, body: dict[str, Any]) -> bytes:
        """The request's body as sent on ``route``: with the engine's priority field when the route
        sets one and the line does not."""
        if route.engine_priority is not None and "priority" not in body:
            body = {**body, "priority": route.engine_priority}
        return orjson.dumps(body)

    def send_on(
        self,
        route: Route,
        path: str,
        payload: bytes,
        held: str | None = None,
        heartbeat: Heartbeat = None,
        every: float = 30,
        deadline: float | None = None,
        may_defer: bool = True,
    ) -> tuple[Outcome, Release]:
        """Send through ``route``; the first attempt uses the slot ``held`` when given.

        Blocks the calling thread: the limiter and the back-off run here, each HTTP attempt on the
        process's event loop. ``heartbeat`` is called every ``every`` seconds while waiting. The
        last attempt's slot is not given back: the caller hands the returned ``Release`` to the
        limiter (or folds it into its own Redis call). If this raises, every slot is given back.

        A 429 spends no attempt either: the line waits while its route paces to what the 429s
        taught it, up to ``BATCHQ_UPSTREAM_MAX_THROTTLED_S`` (or its batch's expiry).
        While the route is down (its breaker open) the line waits without spending attempts. Time
        spent waiting for a slot does not count against the retry time budget. It gives up when the
        outage outlasts ``BATCHQ_UPSTREAM_MAX_OUTAGE_S`` or ``deadline`` (its batch's expiry) passes.
        With ``may_defer`` it raises ``Deferred`` instead when enough lines already wait for the route.
        """
        tries = _Tries(time.monotonic())
        keepalive = Keepalive(heartbeat, every) if heartbeat is not None else None
        token = held
        while True:
            if token is None:
                try:
                    token = tries.blocked(lambda: self.limiter.acquire(route, deadline, keepalive, may_defer))
                except RouteDown as down:
                    return _outage(down, tries.count), Release(route, None, "none")
            tries.count += 1
            outcome, done = self._attempt_holding(route, token, path, payload, heartbeat, every)
            outcome = dataclasses.replace(outcome, attempts=tries.count)
            token = None
            ended = self._after(tries, outcome, done, deadline, heartbeat, every)
            if ended is not None:
                return outcome, ended

    def _after(
        self, tries: _Tries, outcome: Outcome, done: Release, deadline: float | None, heartbeat: Heartbeat, every: float
    ) -> Release | None:
        """After an attempt: None to try again (once waited as the outcome asks), else the line
        ends with ``outcome`` and this Release (its slot, if not given back yet)."""
        if _rate_limited(outcome):
            return None if self._wait_throttled(tries, done, deadline, heartbeat, every) else done
        if not _retryable(outcome):
            return done
        route = done.route
        if done.outcome == "down" and self.limiter.release(done) is RouteState.OPEN:
            tries.count -= 1  # an outage, not this line's failure: wait for the route instead
            return None
        released = done.outcome == "down"
        wait = backoff_s(self.policy, tries.count, done.retry_after, self.rng)
        if not should_retry(self.policy, tries.count, tries.elapsed(), wait):
            return Release(route, None, "none") if released else done
        if not released:
            self.limiter.release(done)
        self.metrics.retried(route.name)
        _sleep(wait, heartbeat, every)
        return None

    def _wait_throttled(
        self, tries: _Tries, done: Release, deadline: float | None, heartbeat: Heartbeat, every: float
    ) -> bool:
        """A 429: no attempt spent. The route learns from it and holds its requests back (the next
        ``acquire`` waits for that); this line also waits a little of its own, so the lines held
        back do not all ask at once. False when the line's time budget for 429s is spent (or its
        batch expired): it ends with the 429."""
        tries.count -= 1
        tries.throttles += 1
        now = time.monotonic()
        tries.throttled_since = tries.throttled_since or now
        over = now - tries.throttled_since > self.policy.max_throttled_s
        if over or (deadline is not None and time.time() >= deadline):
            return False
        self.limiter.release(done)
        self.metrics.retried(done.route.name)
        ceiling = min(self.policy.max_backoff_s, self.policy.base_s * 2 ** min(tries.throttles - 1, 2))
        tries.blocked(lambda: _sleep(self.rng.uniform(0, ceiling), heartbeat, every))
        return True

    def _attempt_holding(
        self, route: Route, token: str | None, path: str, payload: bytes, heartbeat: Heartbeat, every: float
    ) -> tuple[Outcome, Release]:
        self.metrics.in_flight(route.name, 1)
        sent_at, started = clock.now(), time.perf_counter()  # sent_at: on the clock RELEASE's now is on
        try:
            attempt = self._attempt(route, join_url(route.url, path), payload)
            outcome, retry_after = self._ensure_loop().run(attempt, heartbeat, every)
        except BaseException:
            self.limiter.release(Release(route, token, "error"))
            raise
        finally:
            self.metrics.in_flight(route.name, -1)
        seconds = time.perf_counter() - started
        self.metrics.observe_attempt(route.name, attempt_outcome(outcome.status, outcome.error_code), seconds)
        sample = latency_sample(seconds, outcome.status, outcome.body)
        kept = seconds if sample > 0 else 0.0
        return outcome, Release(route, token, _kind(outcome), retry_after, sample, kept, sent_at)

    async def _attempt(self, route: Route, url: str, payload: bytes) -> tuple[Outcome, float | None]:
        try:
            response = await self._send(route, url, payload)
        except httpx2.TimeoutException as exc:
            return Outcome(None, error_code="upstream_timeout", error_message=_describe(exc)), None
        except httpx2.TransportError as exc:
            return Outcome(None, error_code="upstream_unreachable", error_message=_describe(exc)), None
        headers = response.headers
        retry_after = (
            rate_limit_wait(headers) if response.status_code == 429 else parse_retry_after(headers.get("retry-after"))
        )
        return Outcome(response.status_code, _body(response.content), _request_id(response)), retry_after

    def _ensure_loop(self) -> LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = LoopThread()
            return self._loop

    async def _send(self, route: Route, url: str, payload: bytes) -> httpx2.Response:
        """One request straight through the transport: no redirects, cookies or auth flows to run."""
        s = self.settings
        timeout = httpx2.Timeout(route.timeout_s or s.upstream_timeout_s, connect=s.upstream_connect_timeout_s)
        request = httpx2.Request(
            "POST", url, content=payload, headers=_headers(route), extensions={"timeout": timeout.as_dict()}
        )
        response = await self._transport_for(route).handle_async_request(request)
        await response.aread()
        return response

    def _transport_for(self, route: Route) -> httpx2.AsyncBaseTransport:
        transport = self._transports.get(route.name)
        if transport is None:
            transport = self._transport or _aiohttp_transport(self.settings.worker_concurrency)
            self._transports[route.name] = transport
        return transport

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run(self._aclose())

    async def _aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
        self._transports.clear()


def _aiohttp_transport(size: int) -> AiohttpTransport:
    """aiohttp drives the sockets (measured several times cheaper per request than httpcore2)."""
    connector = aiohttp.TCPConnector(limit=size, keepalive_timeout=4.0, enable_cleanup_closed=True)
    return AiohttpTransport(aiohttp.ClientSession(connector=connector, auto_decompress=False))


def no_upstream(path: str, model: object) -> Outcome:
    return Outcome(None, error_code="no_upstream", error_message=f"No upstream serves {path} for {model!r}.")


def _sleep(seconds: float, heartbeat: Heartbeat, every: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, every))
        if heartbeat is not None and left > every:
            heartbeat()


def _kind(outcome: Outcome) -> str:
    if outcome.status == 429:
        return "throttled"
    if is_down(outcome.status):
        return "down"
    return "ok" if outcome.status is not None and outcome.status < 500 else "error"


@dataclass
class _Tries:
    """A line's attempts, and the time it spent blocked waiting for a slot (at the route's cap, or
    for a route that was down): that wait is not the upstream's, so the retry budget leaves it out."""

    started: float
    count: int = 0
    waited: float = 0.0
    throttles: int = 0  # 429s: they spend no attempt
    throttled_since: float = 0.0  # the first 429's time (monotonic; 0: none yet)

    def blocked(self, wait: Callable[[], T]) -> T:
        begun = time.monotonic()
        try:
            return wait()
        finally:
            self.waited += time.monotonic() - begun

    def elapsed(self) -> float:
        return time.monotonic() - self.started - self.waited


def _outage(down: RouteDown, attempts: int) -> Outcome:
    return Outcome(None, error_code="upstream_unreachable", error_message=str(down), attempts=attempts)


def _headers(route: Route) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if route.api_key:
        headers["authorization"] = f"Bearer {route.api_key}"
    return headers


def _rate_limited(outcome: Outcome) -> bool:
    """A 429 that is a rate limit: a reason to wait. Not one that says the account's quota or
    credit is spent (OpenAI's ``insufficient_quota``): waiting does not end that one."""
    if outcome.status != 429:
        return False
    error = outcome.body.get("error") if isinstance(outcome.body, dict) else None
    return not (isinstance(error, dict) and error.get("code") == "insufficient_quota")


def _retryable(outcome: Outcome) -> bool:
    return outcome.status is None or is_retryable_status(outcome.status)


def _body(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get("x-request-id") or response.headers.get("request-id")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
