"""The route window's Lua (RELEASE on a real Redis) does exactly what batchq.domain.throughput specifies."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from batchq.domain.routing import Release, Route
from batchq.domain.throughput import ERROR_CUT, THROTTLE_CUT, Seek, SeekLimit
from batchq.storage import keys
from batchq.storage.limits import RedisLimiter
from batchq.storage.lua import Call

pytestmark = pytest.mark.integration

NUMBERS = (
    "w",
    "base",
    "skip",
    "mark",
    "ref_x",
    "count",
    "total",
    "top",
    "ref_l",
    "ref_top",
    "held_l",
    "low_l",
    "rounds",
    "ceiling",
    "cut",
)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.mark.parametrize("seed", [1, 2])
def test_the_lua_window_follows_the_domain_rule(client: redis.Redis, seed: int) -> None:
    """A queue whose knee moves, noisy latencies, an irregular clock, now and then a 429 or a 500:
    after every answer the stored window and round equal the rule's."""
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10)
    route = Route(name=f"r{seed}", url="http://upstream.test", max_in_flight=96)
    assert limiter.mode_of(route) == "throughput"
    limit = SeekLimit(cap=96, w0=limiter.release_call(Release(route, "t", "ok", seconds=1.0)).args["w0"])  # type: ignore[union-attr]
    rng, now, state = random.Random(seed), 1_000_000.0, None
    transitions = set()
    for step in range(4000):
        now += rng.expovariate(400)
        knee = 20 if (step // 1000) % 2 == 0 else 50
        w = state.w if state else limit.w0
        n = rng.randint(max(1, int(w) - 3), int(w) + 1)
        pipe = client.pipeline(transaction=False)  # the requests in flight: tokens in the route's in-flight set
        pipe.delete(keys.limit_inflight(route.name))
        pipe.zadd(keys.limit_inflight(route.name), {f"x{i}": now + 60 for i in range(n - 1)} | {"t": now + 60})
        pipe.execute()
        draw = rng.random()
        outcome = "throttled" if draw < 0.003 else "error" if draw < 0.005 else "ok"
        seconds = 0.1 * max(1.0, n / knee) * rng.lognormvariate(0, 0.05)
        done = Release(route, "t", outcome, seconds=seconds if outcome == "ok" else 0.0)
        call = limiter.release_call(done)
        assert call is not None
        limiter._release.run({"slot": Call(call.keys, call.args | {"now": now})})
        if outcome == "ok":
            expected = limit.answer(state, seconds, n, now)
        else:
            expected = limit.back_off(state, THROTTLE_CUT if outcome == "throttled" else ERROR_CUT, now)
        state = stored(client, route)  # step by step: Lua keeps 14 digits, so each step starts from Redis's
        for name in NUMBERS:
            assert getattr(state, name) == pytest.approx(getattr(expected, name), rel=1e-9, abs=1e-9), (step, name)
        assert (state.phase, state.fast, state.lower) == (expected.phase, expected.fast, expected.lower), step
        transitions.add(state.phase)
    assert transitions == {"hold", "up", "down"}  # every phase was crossed


def stored(client: redis.Redis, route: Route) -> Seek:
    h = {k.decode(): v.decode() for k, v in client.hgetall(keys.limit_window(route.name)).items()}
    numbers = {name: float(h["w" if name == "w" else f"s_{name}"]) for name in NUMBERS}
    flags = {"fast": h["s_fast"] == "1", "lower": h["s_lower"] == "1"}
    counts = {"count": int(numbers.pop("count")), "rounds": int(numbers.pop("rounds"))}
    return Seek(**numbers, **counts, **flags, phase=h["s_phase"])  # type: ignore[arg-type]
