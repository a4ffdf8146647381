"""One Redis client per process, with a pool sized for the worker's concurrency.

A ``BlockingConnectionPool`` makes a burst wait for a free connection instead of failing with
``MaxConnectionsError``; reconnects are retried with backoff. A ``sentinel://`` URL
(``batchq.domain.redis_url``) gives a client of the master the Sentinels name, found again after
a failover.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from batchq.domain.redis_url import is_sentinel, parse_sentinel_url
from batchq.errors import Unavailable


def connect(url: str, max_connections: int = 64) -> redis.Redis:
    if is_sentinel(url):
        return sentinel_client(url, max_connections)
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


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The master's pool, blocking like ``connect``'s: redis-py's Sentinel pool does not block."""


def sentinel_client(url: str, max_connections: int = 64, **options: Any) -> redis.Redis:
    """A client of the current master: each new connection asks the Sentinels where it is, and a
    connection to a demoted master (READONLY) is dropped and made again."""
    spec = parse_sentinel_url(url)
    sentinel_options = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0, "password": spec.sentinel_password}
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    options = {
        "max_connections": max_connections,
        "timeout": 30,
        "health_check_interval": 30,
        "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    } | options
    return sentinel.master_for(  # type: ignore[no-untyped-call,no-any-return]
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
