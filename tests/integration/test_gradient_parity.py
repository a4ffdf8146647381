"""The route window's Lua (RELEASE on a real Redis) does exactly what batchq.domain.gradient specifies."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from batchq.domain.gradient import Gradient, GradientLimit
from batchq.domain.routing import Release, Route
from batchq.storage import keys
from batchq.storage.limits import RedisLimiter
from batchq.storage.lua import Call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.mark.parametrize("priority", ["normal", "background"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_lua_window_follows_the_domain_rule(client: redis.Redis, seed: int, priority: str) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10, mode="gradient", tolerance=1.2)
    route = Route(name=f"r{seed}", url="http://upstream.test", max_in_flight=64, priority=priority)  # type: ignore[arg-type]
    call = limiter.release_call(Release(route, "t", "ok", latency_s=1.0))
    assert call is not None
    limit = GradientLimit(cap=64, w0=call.args["w0"], tolerance=call.args["tolerance"], min_cut=call.args["min_cut"])
    rng, now, state = random.Random(seed), 1_000_000.0, None
    for phase in range(6):  # calm and loaded phases, noisy latencies, an irregular clock
        level = 0.2 if phase % 2 == 0 else rng.uniform(0.3, 1.5)
        for _ in range(400):
            now += rng.expovariate(50)
            latency = level * rng.lognormvariate(0, 0.3)
            expected = limit.update(state, latency, now)
            limiter._release.run({"slot": Call(call.keys, call.args | {"now": now, "latency": latency})})
            state = stored(client, route)  # step by step: Lua keeps 14 digits, so each step starts from Redis's
            for name in ("w", "base", "short", "cut"):
                assert getattr(state, name) == pytest.approx(getattr(expected, name), rel=1e-9), name
            assert state.slow_start == expected.slow_start


def stored(client: redis.Redis, route: Route) -> Gradient:
    h = {k.decode(): v.decode() for k, v in client.hgetall(keys.limit_window(route.name)).items()}
    numbers = {name: float(h[name]) for name in ("w", "base", "short", "cut", "at")}
    return Gradient(**numbers, slow_start=h["ss"] == "1")
