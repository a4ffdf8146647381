"""What batchq asks Redis about itself: which process answers (a restart changes its ``run_id``),
since when, and whether it keeps what it is given (persistence, eviction)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import redis

from batchq.storage import clock, keys

log = logging.getLogger("batchq.redis")


@dataclass(frozen=True)
class ServerInfo:
    run_id: str  # new with every start of the Redis process
    started_at: float  # unix time the process started (to the second)
    first_seen: float = 0.0  # when the watchdog first saw this process answer (after its AOF loaded)


def server_info(client: redis.Redis) -> ServerInfo:
    info = client.info("server")
    return ServerInfo(str(info["run_id"]), clock.now() - float(info["uptime_in_seconds"]))


def with_first_seen(client: redis.Redis, info: ServerInfo) -> ServerInfo:
    """``info`` with the time it was first seen answering: the workers renew their leases from then
    on (loading a large AOF can take longer than the grace, counted from its start)."""
    key = f"{keys.REDIS_FIRST_SEEN}:{info.run_id}"
    client.set(key, clock.now(), nx=True, ex=7 * 86_400)
    return replace(info, first_seen=float(client.get(key) or clock.now()))


DURABILITY_CONFIG = ("appendonly", "appendfsync", "save", "maxmemory-policy", "maxmemory")


def durability_config(client: redis.Redis) -> dict[str, str]:
    """What decides whether Redis keeps batchq's state (``CONFIG GET``; raises ``redis.ResponseError``
    when it is refused, as managed Redis often does)."""
    config: dict[str, str] = {}
    for name in DURABILITY_CONFIG:
        config |= {_text(k): _text(v) for k, v in client.config_get(name).items()}
    return config


def redis_version(client: redis.Redis) -> str:
    return _text(client.info("server").get("redis_version", "?"))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def durability_problems(client: redis.Redis) -> list[str]:
    """What makes this Redis lose batchq's state: no persistence, or keys it may evict.

    Raises ``redis.ResponseError`` when ``CONFIG GET`` is refused (managed Redis often does).
    """
    config = client.config_get("appendonly")
    config |= client.config_get("save")
    config |= client.config_get("maxmemory-policy")
    problems = []
    if config.get("appendonly") != "yes" and not (config.get("save") or "").strip():
        problems.append("Redis has no persistence (appendonly no, no save points): a restart loses every batch")
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        problems.append(f"Redis maxmemory-policy is {policy}, not noeviction: an evicted key is a lost line or batch")
    return problems


def warn_if_not_durable(client: redis.Redis) -> None:
    """At startup: a WARNING for each way this Redis can lose batchq's state; never raises."""
    try:
        problems = durability_problems(client)
    except redis.ResponseError as exc:  # CONFIG is often refused on managed Redis
        log.info("redis persistence and eviction policy not checked: CONFIG GET refused", extra={"reason": str(exc)})
        return
    except redis.RedisError as exc:
        log.info("redis persistence and eviction policy not checked", extra={"reason": str(exc)})
        return
    for problem in problems:
        log.warning(problem + " (see docs/operations.md, 'Redis: persistence and failover')")
