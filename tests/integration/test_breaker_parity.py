"""The breaker's Lua (RELEASE on a real Redis) does what batchq.domain.health.Breaker specifies."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from batchq.domain.health import Breaker, BreakerPolicy
from batchq.domain.routing import Release, Route
from batchq.storage import keys
from batchq.storage.limits import RedisLimiter
from batchq.storage.lua import Call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_lua_breaker_follows_the_domain_rule(client: redis.Redis, seed: int) -> None:
    client.flushdb()
    policy = BreakerPolicy(failures=1 + seed % 3)
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=policy)
    route = Route(name=f"r{seed}", url="http://upstream.test", max_in_flight=8)
    rng, breaker = random.Random(seed), Breaker()
    for step in range(600):
        outcome = rng.choices(["down", "ok", "error", "throttled"], [6, 2, 1, 1])[0]
        now = 1_000_000.0 + step
        breaker, changed = breaker.record(outcome, now, policy)
        call = limiter.release_call(Release(route, "t", outcome))
        assert call is not None
        reply = limiter._release.run({"slot": Call(call.keys, call.args | {"now": now})}).decode()
        health = client.hmget(keys.limit_health(route.name), "failures", "open_since")
        assert int(health[0] or 0) == breaker.failures
        assert (float(health[1]) if health[1] else None) == breaker.open_since
        assert reply == f"{breaker.state.value}:{['', 'opened' if breaker.open_since else 'closed'][changed]}"
