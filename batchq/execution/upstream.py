"""The HTTP client for the OpenAI-compatible upstream, and the one place its errors are translated.

Each worker process owns one asyncio event loop, in a daemon thread, with one pooled
``httpx2.AsyncClient``. Celery's task threads hand their requests to that loop and wait:
the threads only block, and all sockets are driven by one loop (see docs/architecture.md
for the measurements behind this choice).
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
from typing import Any, TypeVar

import httpx2
import orjson

from batchq.config import Settings
from batchq.domain.retry import RetryPolicy, backoff_s, is_retryable_status, parse_retry_after, should_retry

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What the upstream finally said: a response (any status), or no response at all."""

    status: int | None
    body: Any = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 1


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
        base_s=settings.upstream_backoff_base_s,
        max_backoff_s=settings.upstream_backoff_max_s,
    )


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run`` blocks the caller until done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
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
    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.policy = policy_from(settings)
        self.rng = rng or random.Random()
        self._loop: LoopThread | None = None
        self._client: httpx2.AsyncClient | None = None
        self._lock = threading.Lock()

    def send(self, path: str, body: Any, heartbeat: Callable[[], None] | None = None, every: float = 30) -> Outcome:
        """POST ``body`` to the upstream at ``path``, retrying what should be retried. Blocks."""
        loop = self._ensure_loop()
        return loop.run(self.send_async(path, orjson.dumps(body)), heartbeat, every)

    async def send_async(self, path: str, payload: bytes) -> Outcome:
        url = join_url(self.settings.upstream_url, path)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome, retry_after = await self._attempt(url, payload)
            if not _retryable(outcome):
                return _with_attempts(outcome, attempt)
            wait = backoff_s(self.policy, attempt, retry_after, self.rng)
            if not should_retry(self.policy, attempt, time.monotonic() - started, wait):
                return _with_attempts(outcome, attempt)
            await asyncio.sleep(wait)

    async def _attempt(self, url: str, payload: bytes) -> tuple[Outcome, float | None]:
        try:
            response = await self._get_client().post(url, content=payload, headers=self._headers())
        except httpx2.TimeoutException as exc:
            return Outcome(None, error_code="upstream_timeout", error_message=_describe(exc)), None
        except httpx2.TransportError as exc:
            return Outcome(None, error_code="upstream_unreachable", error_message=_describe(exc)), None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return Outcome(response.status_code, _body(response.content), _request_id(response)), retry_after

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.settings.upstream_api_key:
            headers["authorization"] = f"Bearer {self.settings.upstream_api_key}"
        return headers

    def _ensure_loop(self) -> LoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = LoopThread()
            return self._loop

    def _get_client(self) -> httpx2.AsyncClient:
        s = self.settings
        if self._client is None:
            self._client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(s.upstream_timeout_s, connect=s.upstream_connect_timeout_s),
                limits=httpx2.Limits(
                    max_connections=s.worker_concurrency,
                    max_keepalive_connections=s.worker_concurrency,
                    keepalive_expiry=4.0,
                ),
            )
        return self._client


def _retryable(outcome: Outcome) -> bool:
    return outcome.status is None or is_retryable_status(outcome.status)


def _with_attempts(outcome: Outcome, attempts: int) -> Outcome:
    return dataclasses.replace(outcome, attempts=attempts)


def _body(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return content.decode("utf-8", errors="replace")


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get("x-request-id") or response.headers.get("request-id")


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
