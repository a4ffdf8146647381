"""One Redis client per process, with a pool sized for the worker's concurrency.

A ``BlockingConnectionPool`` makes a burst wait for a free connection instead of failing with
``MaxConnectionsError``. Connects and reads time out (``BATCHQ_REDIS_CONNECT_TIMEOUT_S``,
``BATCHQ_REDIS_SOCKET_TIMEOUT_S``), and a failed command is retried with backoff for at most
``retry_s`` in all: the API keeps that short (it answers 503 at once, with ``Retry-After``), a
worker long enough to ride out a Redis restart with the results of the lines it holds. A
``sentinel://`` URL (``batchq.domain.redis_url``) gives a client of the master the Sentinels name,
found again after a failover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from batchq.domain.redis_url import is_sentinel, parse_sentinel_url
from batchq.errors import Unavailable

T = TypeVar("T")
POOL_WAIT_S = 30  # the longest a command waits for a free connection of the pool


class BoundedRetry(Retry):
    """Exponential backoff (50 ms doubling, at most 2 s a wait), bounded by total time.

    redis-py nests retries (a command's retry reconnects under the connection's own): the
    outermost call on a thread sets the deadline, and every call nested in it keeps to it.
    """

    def __init__(self, budget_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=2.0, base=0.05), retries=-1 if budget_s > 0 else 0)
        self.budget_s = budget_s

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        outer = getattr(_deadline, "at", None)
        if outer is None:
            _deadline.at = time.monotonic() + self.budget_s
        try:
            return self._attempts(do, fail, is_retryable, with_failure_count)
        finally:
            if outer is None:
                _deadline.at = None

    def _attempts(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_failure_count: bool,
    ) -> T:
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                _trouble.at = time.monotonic()
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                wait = min(2.0, 0.05 * 2**failures)
                if time.monotonic() + wait > _deadline.at:
                    raise
                time.sleep(wait)


_deadline = threading.local()  # .at: when the outermost retry on this thread gives up


class _Trouble:
    at: float | None = None  # monotonic: the last command of this process that failed or was retried


_trouble = _Trouble()


def last_trouble() -> float | None:
    """When a Redis command of this process (any thread, any client) last failed or was retried
    (``time.monotonic()``); None if none did. The watchdog takes it for a break in its contact."""
    return _trouble.at


def connect(
    url: str,
    max_connections: int = 64,
    *,
    connect_timeout_s: float | None = None,
    socket_timeout_s: float | None = None,
    retry_s: float = 3.0,
) -> redis.Redis:
    timeouts = {"socket_connect_timeout": connect_timeout_s, "socket_timeout": socket_timeout_s}
    if is_sentinel(url):
        return sentinel_client(url, max_connections, retry=BoundedRetry(retry_s), **timeouts)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        health_check_interval=30,
        socket_keepalive=True,
        retry=BoundedRetry(retry_s),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **timeouts,
    )
    return redis.Redis(connection_pool=pool)


# redis-py types ``Sentinel`` in some releases and not in others: the boundary is typed here, once,
# so that a release with more precise stubs cannot make a ``type: ignore`` stale (and fail mypy).
_make_sentinel: Callable[..., Any] = Sentinel


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The master's pool, blocking like ``connect``'s: redis-py's Sentinel pool does not block."""


def sentinel_client(url: str, max_connections: int = 64, **options: Any) -> redis.Redis:
    """A client of the current master: each new connection asks the Sentinels where it is, and a
    connection to a demoted master (READONLY) is dropped and made again."""
    spec = parse_sentinel_url(url)
    sentinel_options = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0, "password": spec.sentinel_password}
    sentinel = _make_sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_options)
    options = {
        "max_connections": max_connections,
        "timeout": 30,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    } | options
    master_for: Callable[..., redis.Redis] = sentinel.master_for
    return master_for(
        spec.master, connection_pool_class=BlockingSentinelPool, db=spec.db,
        username=spec.username, password=spec.password, **options,
    )  # fmt: skip


def probe(url: str, timeout: float = 1.0) -> None:
    """Ask the Redis at ``url`` (through its Sentinels for a Sentinel URL) for a PONG, once,
    without retries; any failure raises ``redis.RedisError``."""
    quick: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    quick["retry"] = Retry(NoBackoff(), 0)
    if not is_sentinel(url):
        with redis.Redis.from_url(url, **quick) as client:
            client.ping()
        return
    try:
        with sentinel_client(url, max_connections=2, **quick) as client:
            client.ping()
    except MasterNotFoundError:  # its message lists every connection's settings: say it short
        master = parse_sentinel_url(url).master
        raise redis.ConnectionError(f"no Sentinel named a master {master!r} that answers") from None


def ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc
