"""One Redis client per process, with a pool sized for the worker's concurrency.

A ``BlockingConnectionPool`` makes a burst wait for a free connection instead of failing with
``MaxConnectionsError``; reconnects are retried with backoff.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from batchq.errors import Unavailable


def connect(url: str, max_connections: int = 64) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        health_check_interval=30,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.Redis(connection_pool=pool)


def ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc
