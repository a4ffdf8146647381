"""What RELEASE's Lua learns from 429s, and how ACQUIRE spaces requests by it, is batchq.domain.pace's rule."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from batchq.domain.pace import Pace
from batchq.domain.routing import Release, Route
from batchq.storage import keys
from batchq.storage.limits import RedisLimiter
from batchq.storage.lua import Call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_lua_pace_follows_the_domain_rule(client: redis.Redis, seed: int) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10)
    route = Route(name=f"p{seed}", url="http://upstream.test", max_in_flight=64)
    rng, now, learnt = random.Random(seed), 1_000_000.0, 0.0
    for step in range(1500):
        now += rng.expovariate(20)
        limited = (step // 300) % 2 == 1  # bursts of 429s between runs of answers
        outcome = "throttled" if limited and rng.random() < 0.7 else "ok"
        hint = rng.choice([0.0, 0.0, 0.0, 2.0]) if outcome == "throttled" else None
        sent_at = now - rng.uniform(0, 0.2)
        call = limiter.release_call(Release(route, "t", outcome, hint, seconds=0.1, sent_at=sent_at))
        assert call is not None
        notbefore = float(client.get(keys.limit_notbefore(route.name)) or 0)
        pace = stored(client, route)  # each step from Redis's state: Lua keeps 14 digits
        limiter._release.run({"slot": Call(call.keys, call.args | {"now": now})})
        if outcome == "ok":
            pace = pace.answered()
        else:
            pace, wait = pace.throttled(hint or 0.0, sent_at, now)
            stored_nb = float(client.get(keys.limit_notbefore(route.name)) or 0)
            assert stored_nb == pytest.approx(max(notbefore, now + wait) if wait > 0 else notbefore, abs=1e-6)
        assert _same(stored(client, route), pace), (step, stored(client, route), pace)
        learnt = max(learnt, pace.rate)
    assert learnt > 0  # a pace was learnt along the way


def test_acquire_spaces_requests_to_the_learnt_pace(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10)
    route = Route(name="spaced", url="http://upstream.test", max_in_flight=1000)
    now = 2_000_000.0
    client.hset(keys.limit_window(route.name), mapping={"r_rate": 4.0, "r_last": now})
    granted = 0
    for i in range(400):  # 4 s of asking every 10 ms: 4/s, after a second's burst allowance
        _, call = limiter.acquire_call(route) or ("", None)
        assert call is not None
        reply = limiter._acquire.run({"slot": Call(call.keys, call.args | {"now": now + i * 0.01})})
        granted += reply == b"0"
    rate = Pace(rate=4.0, last=now).rate_at(now + 4)
    assert 4 * 4 <= granted <= rate * 4 + rate + 1


def stored(client: redis.Redis, route: Route) -> Pace:
    h = {k.decode(): float(v) for k, v in client.hgetall(keys.limit_window(route.name)).items() if k.startswith(b"r_")}
    counts = {"answers": int(h.get("r_answers", 0)), "streak": int(h.get("r_streak", 0))}
    return Pace(
        rate=h.get("r_rate", 0.0),
        since=h.get("r_since", 0.0),
        wait=h.get("r_wait", 0.0),
        last=h.get("r_last", 0.0),
        **counts,
    )


def _same(got: Pace, expected: Pace) -> bool:
    fields = ("rate", "since", "answers", "wait", "last", "streak")
    return all(getattr(got, f) == pytest.approx(getattr(expected, f), rel=1e-9, abs=1e-9) for f in fields)
