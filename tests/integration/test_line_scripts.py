"""The combined line scripts on a real Redis: a line and its limiter slot move together."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from unittest import mock

import pytest
import redis

from batchq.domain.health import BreakerPolicy, Deferred, RouteDown, RouteState
from batchq.domain.results import response_line
from batchq.domain.routing import Release, Route
from batchq.storage import keys
from batchq.storage.batches import BatchStore
from batchq.storage.limits import Keepalive, RedisLimiter
from batchq.storage.lua import Call
from batchq.storage.scheduler import Scheduler

pytestmark = pytest.mark.integration
ROUTE = Route(name="solo", url="http://upstream.test", max_in_flight=1)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.fixture
def store(client: redis.Redis) -> BatchStore:
    client.flushdb()  # a private server: this module's own
    client.hset(keys.batch("b1"), mapping={"status": "in_progress", "total": 3, "expires_at": int(time.time()) + 60})
    return BatchStore(client)


def in_flight(client: redis.Redis) -> int:
    return int(client.zcard(keys.limit_inflight(ROUTE.name)))


def test_a_line_that_may_run_takes_its_slot_in_the_same_call(client: redis.Redis, store: BatchStore) -> None:
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10)
    first = limiter.acquire_call(ROUTE)
    second = limiter.acquire_call(ROUTE)
    assert first is not None and second is not None
    assert store.begin_line("b1", 0, 30, first[1]).slot is True
    start = store.begin_line("b1", 1, 30, second[1])
    assert (start.verdict, start.slot) == ("go", False)  # leased, but the cap of 1 is taken
    assert in_flight(client) == 1


def test_a_line_that_may_not_run_takes_no_slot(client: redis.Redis, store: BatchStore) -> None:
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10)
    ask = limiter.acquire_call(ROUTE)
    assert ask is not None
    client.setbit(keys.batch_done("b1"), 2, 1)
    assert store.begin_line("b1", 2, 30, ask[1]).verdict == "done"
    client.hset(keys.batch("b1"), "status", "cancelling")
    assert store.begin_line("b1", 0, 30, ask[1]).verdict == "stop"
    assert in_flight(client) == 0


def test_completing_gives_the_slot_back_once_and_stores_the_result_once(client: redis.Redis, store: BatchStore) -> None:
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10)
    ask = limiter.acquire_call(ROUTE)
    assert ask is not None and store.begin_line("b1", 0, 30, ask[1]).slot
    result = response_line("c0", 200, "req", {"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    release = limiter.release_call(Release(ROUTE, ask[0], "ok"))
    progress = store.complete_line("b1", 0, result, release)
    assert (progress.accepted, progress.done, progress.total) == (True, 1, 3)
    assert in_flight(client) == 0
    assert client.llen(keys.limit_freed(ROUTE.name)) == 1  # a waiting worker is woken
    again = store.complete_line("b1", 0, result, release)
    assert again.accepted is False
    assert client.llen(keys.limit_freed(ROUTE.name)) == 1  # a slot is given back once
    assert int(client.hget(keys.batch("b1"), "completed") or 0) == 1


def test_a_throttled_last_attempt_pushes_the_shared_not_before_time(client: redis.Redis, store: BatchStore) -> None:
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10)
    ask = limiter.acquire_call(ROUTE)
    assert ask is not None and store.begin_line("b1", 0, 30, ask[1]).slot
    result = response_line("c0", 429, "req", {"error": {"message": "slow down"}})
    store.complete_line("b1", 0, result, limiter.release_call(Release(ROUTE, ask[0], "throttled", 5.0)))
    not_before = float(client.get(keys.limit_notbefore(ROUTE.name)) or 0)
    assert not_before > time.time() + 4
    later = limiter.acquire_call(ROUTE)
    assert later is not None and store.begin_line("b1", 1, 30, later[1]).slot is False


def queued(client: redis.Redis) -> list[bytes]:
    return list(client.lrange(keys.LINE_QUEUE, 0, -1))


def test_every_delivered_task_lets_the_next_granted_line_in(client: redis.Redis, store: BatchStore) -> None:
    sched = Scheduler(client, depth=1)
    client.hset(keys.batch("b1"), "account", "acct")
    sched.add("b1", "acct", [b"task-0", b"task-1", b"task-2"], time.time() + 3600, time.time())
    assert client.rpop(keys.LINE_QUEUE) == b"task-0"  # a worker takes the one granted task
    assert store.begin_line("b1", 0, 30, fill=sched.fill_call(time.time())).verdict == "go"
    assert queued(client) == [b"task-1"] and sched.waiting("b1") == 1
    client.rpop(keys.LINE_QUEUE)
    assert store.begin_line("b1", 0, 30, fill=sched.fill_call(time.time())).verdict == "leased"  # a redelivery
    assert queued(client) == [b"task-2"] and sched.waiting("b1") == 0  # took one out, so let one in


def test_a_full_queue_lets_nothing_more_in(client: redis.Redis, store: BatchStore) -> None:
    sched = Scheduler(client, depth=2)
    client.hset(keys.batch("b1"), "account", "acct")
    sched.add("b1", "acct", [b"task-0", b"task-1", b"task-2"], time.time() + 3600, time.time())
    assert store.begin_line("b1", 0, 30, fill=sched.fill_call(time.time())).verdict == "go"
    assert queued(client) == [b"task-1", b"task-0"] and sched.waiting("b1") == 1


def test_a_stored_line_counts_for_its_tenant(client: redis.Redis, store: BatchStore) -> None:
    client.hset(keys.batch("b1"), "account", "acct")
    assert store.complete_line("b1", 0, response_line("c0", 200, "req", {})).accepted
    assert not store.complete_line("b1", 0, response_line("c0", 200, "req", {})).accepted  # counted once
    assert client.hget(keys.TENANT_LINES, "acct") == b"1"


def test_down_outcomes_in_a_row_open_the_breaker_and_an_answer_closes_it(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(3, probe_s=5))
    route = Route(name="flaky", url="http://upstream.test", max_in_flight=0)
    states = [limiter.release(Release(route, None, "down")) for _ in range(3)]
    assert states == [RouteState.CLOSED, RouteState.CLOSED, RouteState.OPEN]
    probe = limiter.acquire_call(route)
    assert probe is not None and limiter._acquire.run({"slot": probe[1]}) == b"0"  # one probe goes out
    again = limiter.acquire_call(route)
    assert again is not None
    assert limiter._acquire.run({"slot": again[1]}).startswith(b"o")  # the others wait for the next one
    assert limiter.release(Release(route, None, "ok")) is RouteState.CLOSED
    assert client.hget(keys.limit_health(route.name), "open_since") is None
    assert limiter._acquire.run({"slot": again[1]}) == b"0"


def test_an_answer_between_down_outcomes_keeps_the_breaker_closed(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(3))
    route = Route(name="flaky", url="http://upstream.test", max_in_flight=0)
    outcomes = ["down", "down", "error", "down", "down"]  # a 500 is an answer: the upstream is there
    assert {limiter.release(Release(route, None, o)) for o in outcomes} == {RouteState.CLOSED}


def test_a_waiting_line_gives_up_once_the_outage_outlasts_its_limit(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(1, 5, max_outage_s=60))
    route = Route(name="gone", url="http://upstream.test", max_in_flight=4)
    client.hset(keys.limit_health(route.name), mapping={"open_since": time.time() - 61, "failures": 9})
    client.set(keys.limit_probe(route.name), "1", px=5000)  # another worker's probe is out
    with pytest.raises(RouteDown):
        limiter.acquire(route)


def test_a_line_waiting_for_a_down_route_keeps_its_lease_alive(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(1, probe_s=0.2))
    route = Route(name="restarting", url="http://upstream.test", max_in_flight=4)
    client.hset(keys.limit_health(route.name), mapping={"open_since": time.time(), "failures": 3})
    client.set(keys.limit_probe(route.name), "1", px=1000)  # a probe is out: this line must wait
    beats: list[float] = []
    back = threading.Timer(0.8, lambda: limiter.release(Release(route, None, "ok")))  # the probe's answer
    back.start()
    token = limiter.acquire(route, keepalive=Keepalive(lambda: beats.append(time.time()), every=0.0))
    back.join()
    assert token is not None and beats, "the lease was renewed while the line waited"


def feed(limiter: RedisLimiter, route: Route, latency: float, count: int, start: float) -> float:
    """``count`` answers of ``latency`` seconds, 10 ms apart on a made-up clock; returns the window after."""
    for i in range(count):
        call = limiter.release_call(Release(route, "t", "ok", latency_s=latency))
        assert call is not None
        limiter._release.run({"slot": Call(call.keys, call.args | {"now": start + i * 0.01})})
    return float(limiter._client.hget(keys.limit_window(route.name), "w") or 0)


def test_the_gradient_window_follows_latency_and_stays_within_one_and_the_cap(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10, mode="gradient", tolerance=1.2)
    route = Route(name="llm", url="http://upstream.test", max_in_flight=64)
    t = 1_000_000.0
    grown = feed(limiter, route, 0.2, 30, t)
    assert grown > 30  # slow start: doubling from 8 while latency stays at its unloaded level
    shrunk = feed(limiter, route, 0.6, 300, t + 1)
    assert 1 <= shrunk < grown / 2  # three times the unloaded latency: backs off, in steps
    regrown = feed(limiter, route, 0.2, 600, t + 5)
    assert shrunk < regrown <= 64  # back near the unloaded level: grows again, never past the cap
    assert feed(limiter, route, 0.2, 3000, t + 20) == 64


def test_an_aimd_route_ignores_latency(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10, mode="aimd")
    route = Route(name="openai", url="http://upstream.test", max_in_flight=64)
    feed(limiter, route, 5.0, 100, 1_000_000.0)
    assert client.hget(keys.limit_window(route.name), "w") is None  # never lowered from the cap


def test_a_slower_upstream_becomes_the_new_normal_instead_of_starving_the_route(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10, mode="gradient", tolerance=1.2)
    route = Route(name="llm", url="http://upstream.test", max_in_flight=64)
    t = 1_000_000.0
    feed(limiter, route, 0.01, 50, t)  # fast requests first
    slow = feed(limiter, route, 1.5, 3000, t + 1)  # then a batch of slow ones, for 30 s
    assert slow >= 8, "the window does not fall below where it started"
    base = float(client.hget(keys.limit_window(route.name), "base") or 0)
    assert base > 1.0, "1.5 s is the upstream's own latency now"


def test_a_line_that_gave_up_does_not_close_the_breaker_nor_count_twice(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(2))
    route = Route(name="gone", url="http://upstream.test", max_in_flight=4)
    for _ in range(2):
        limiter.release(Release(route, "t", "down"))
    limiter.release(Release(route, None, "none"))  # what a line that stopped waiting hands back
    health = client.hgetall(keys.limit_health(route.name))
    assert b"open_since" in health and health[b"down"] == b"2"


def test_a_background_route_yields_first(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=True, default_timeout_s=10, mode="aimd", tolerance=1.5)
    normal = Route(name="shared", url="http://upstream.test", max_in_flight=64, mode="gradient")
    background = Route(name="shared-bg", url="http://upstream.test", max_in_flight=64, priority="background")
    assert limiter.mode_of(background) == "gradient" and limiter.tolerance_of(background) == 1.03
    t = 1_000_000.0
    for route in (normal, background):
        feed(limiter, route, 0.2, 40, t)
    after = {route.name: feed(limiter, route, 0.26, 100, t + 1) for route in (normal, background)}
    assert after["shared"] > 40, "30 % slower is within the normal route's tolerance of 1.5"
    assert after["shared-bg"] < 32, "but not within the background route's: it backs off"


def test_a_line_waiting_for_a_down_route_is_counted_as_its_waiter(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(1, probe_s=0.2))
    route = Route(name="restarting", url="http://upstream.test", max_in_flight=4)
    client.hset(keys.limit_health(route.name), mapping={"open_since": time.time(), "failures": 3})
    client.set(keys.limit_probe(route.name), "1", px=600)  # another line's probe is out
    waiters: list[int] = []

    def look() -> None:
        waiters.append(client.zcount(keys.limit_waiters(route.name), time.time(), "+inf"))

    token = limiter.acquire(route, keepalive=Keepalive(look, every=0.0))  # probes itself once the first lapses
    assert token is not None and waiters and waiters[0] == 1, "the scheduler sees a line waiting there"
    assert client.zcard(keys.limit_waiters(route.name)) == 0, "its entry goes when it gets a slot"


def test_a_line_stands_aside_when_enough_lines_wait_for_the_down_route(client: redis.Redis) -> None:
    client.flushdb()
    policy = BreakerPolicy(1, probe_s=5, waiters=2)
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=policy)
    route = Route(name="restarting", url="http://upstream.test", max_in_flight=4)
    client.hset(keys.limit_health(route.name), mapping={"open_since": time.time(), "failures": 3})
    client.set(keys.limit_probe(route.name), "1", px=1000)  # a probe is out
    client.zadd(keys.limit_waiters(route.name), {"w1": time.time() + 5, "w2": time.time() + 5})
    with pytest.raises(Deferred):
        limiter.acquire(route)
    beats: list[int] = []

    def stop_waiting() -> None:
        beats.append(1)
        raise KeyboardInterrupt  # out of the wait: this line was let in as a waiter

    with pytest.raises(KeyboardInterrupt):  # a line whose batch spans routes waits all the same
        limiter.acquire(route, keepalive=Keepalive(stop_waiting, every=0.0), may_defer=False)
    client.zrem(keys.limit_waiters(route.name), *[m for m in client.zrange(keys.limit_waiters(route.name), 0, -1)
                                                  if m not in (b"w1", b"w2")])  # fmt: skip
    client.zadd(keys.limit_waiters(route.name), {"w2": time.time() - 1})  # one waiter's entry lapsed
    client.set(keys.limit_probe(route.name), "1", px=1000)  # the next probe is out
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(route, keepalive=Keepalive(stop_waiting, every=0.0))
    assert len(beats) == 2 and client.zcard(keys.limit_waiters(route.name)) == 2


def test_asking_at_begin_registers_no_waiter_so_one_waiter_is_one_line(client: redis.Redis) -> None:
    client.flushdb()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, breaker=BreakerPolicy(1, waiters=1))
    route = Route(name="restarting", url="http://upstream.test", max_in_flight=4)
    client.hset(keys.limit_health(route.name), mapping={"open_since": time.time(), "failures": 3})
    client.set(keys.limit_probe(route.name), "1", px=1000)  # a probe is out
    ask = limiter.acquire_call(route)  # what BEGIN_LINE folds in
    assert ask is not None and limiter._acquire.run({"slot": ask[1]}).startswith(b"o")
    assert client.zcard(keys.limit_waiters(route.name)) == 0

    def stop_waiting() -> None:
        raise KeyboardInterrupt  # out of the wait: this line waits (it did not stand aside)

    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(route, keepalive=Keepalive(stop_waiting, every=0.0))
    assert client.zcard(keys.limit_waiters(route.name)) == 1


def test_a_begin_run_again_by_the_client_after_a_timeout_still_goes(client: redis.Redis, store: BatchStore) -> None:
    """redis-py sends a timed-out call again with the same arguments: its first run took the lease."""
    now = time.time()
    with mock.patch("batchq.storage.batches.time.time", return_value=now):
        assert store.begin_line("b1", 0, 30).verdict == "go"
        assert store.begin_line("b1", 0, 30).verdict == "go", "the same call, run again"
    with mock.patch("batchq.storage.batches.time.time", return_value=now + 0.001):
        assert store.begin_line("b1", 0, 30).verdict == "leased", "another delivery of the line"


def test_the_heartbeat_keeps_a_slot_alive_and_a_dead_workers_slot_lapses(client: redis.Redis) -> None:
    client.flushdb()
    alive = RedisLimiter(client, adaptive=True, default_timeout_s=600, slot_ttl_s=1.5)
    dead = RedisLimiter(client, adaptive=True, default_timeout_s=600, slot_ttl_s=1.5)
    pair = Route(name="pair", url="http://upstream.test", max_in_flight=2)
    kept, ghost = alive.acquire(pair), dead.acquire(pair)
    assert kept and ghost and int(client.zcard(keys.limit_inflight("pair"))) == 2
    for _ in range(7):  # 2.1 s: past the dead one's expiry, not the beating one's
        time.sleep(0.3)
        assert alive.renew_held() == 1
    token = alive.acquire(pair)  # the ACQUIRE that drops the ghost takes its place
    assert token is not None
    members = {m.decode() for m in client.zrange(keys.limit_inflight("pair"), 0, -1)}
    assert members == {kept, token}
    alive.release(Release(pair, kept, "ok"))
    assert alive.renew_held() == 1  # the released slot is not renewed, nor brought back
    assert {m.decode() for m in client.zrange(keys.limit_inflight("pair"), 0, -1)} == {token}


def test_a_stopping_worker_does_not_wait_for_a_slot(client: redis.Redis) -> None:
    client.flushdb()
    stopping = threading.Event()
    limiter = RedisLimiter(client, adaptive=False, default_timeout_s=10, stopping=stopping)
    assert limiter.acquire(ROUTE) is not None  # the cap of 1 is taken
    stopping.set()
    with pytest.raises(Deferred):  # back to its batch's turn, instead of holding the shutdown up
        limiter.acquire(ROUTE)


def test_storing_lines_renews_the_working_keys_ttl_at_most_once_a_period(
    client: redis.Redis, store: BatchStore
) -> None:
    working = (keys.batch_done("b1"), keys.batch_results("b1"), keys.batch_order("b1"))
    first = store.complete_line("b1", 0, response_line("c0", 200, "req", {}))
    assert (first.done, first.total) == (1, 3)
    assert all(0 < client.ttl(k) <= keys.RESULT_TTL_S for k in working)  # set by the first line
    for k in working:
        client.expire(k, 1000)  # as if the first line were long ago
    second = store.complete_line("b1", 1, response_line("c1", 500, "req", {}))
    assert (second.accepted, second.done) == (True, 2)  # a failed line counts in the same sum
    assert all(client.ttl(k) <= 1000 for k in working)  # within the period: not renewed
    client.hset(keys.batch("b1"), "ttl_at", int(time.time()) - keys.RESULT_TTL_RENEW_S)
    store.complete_line("b1", 2, response_line("c2", 200, "req", {}))
    assert all(client.ttl(k) > 1000 for k in working)  # a period later: renewed
