"""The scheduler on a real Redis: which waiting line is granted into the line queue, and when.

Messages here are plain labels (b"A1:7": batch A1, line 7): the scheduler moves opaque bytes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from batchq.storage import keys
from batchq.storage.scheduler import GRANT_CHUNK, Scheduler

pytestmark = pytest.mark.integration
FAR = time.time() + 86_400  # not urgent


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connected:
        yield connected


@pytest.fixture
def db(client: redis.Redis) -> redis.Redis:
    client.flushdb()  # a private server: this module's own
    return client


def add(client: redis.Redis, sched: Scheduler, batch: str, tenant: str, lines: int, urgent_at: float = FAR) -> None:
    client.hset(keys.batch(batch), mapping={"status": "in_progress", "account": tenant})
    sched.add(batch, tenant, [f"{batch}:{i}".encode() for i in range(lines)], urgent_at, time.time())


def weigh(client: redis.Redis, tenant: str, weight: float) -> None:
    """A tenant's weight, where ApiKeyStore writes it for a key (the scheduler's Lua reads it there)."""
    client.hset(keys.SCHED_WEIGHTS, tenant, weight)


def take(client: redis.Redis, sched: Scheduler, n: int) -> list[str]:
    """What the workers would run next: take n tasks, each one granting the next (as BEGIN_LINE does)."""
    taken = []
    for _ in range(n):
        message = client.rpop(keys.LINE_QUEUE)
        if message is None:
            break
        taken.append(message.decode())
        sched.fill(time.time())
    return taken


def batches(taken: list[str]) -> Counter[str]:
    return Counter(label.split(":")[0] for label in taken)


def test_the_line_queue_holds_only_its_depth(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=4)
    add(db, sched, "A1", "a", 100)
    assert db.llen(keys.LINE_QUEUE) == 4 and sched.waiting("A1") == 96
    assert take(db, sched, 3) == ["A1:0", "A1:1", "A1:2"]  # a batch's own lines stay in order
    assert db.llen(keys.LINE_QUEUE) == 4


def test_a_newcomer_is_granted_next_not_behind_the_backlog(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=4)
    add(db, sched, "A1", "a", 5000)
    take(db, sched, 1000)
    add(db, sched, "B1", "b", 10)
    taken = take(db, sched, 4 + 20)  # the 4 granted before B came, then B alternates with A
    assert taken[:4] == [f"A1:{i}" for i in range(1000, 1004)]
    assert batches(taken[4:]) == {"A1": 10, "B1": 10}
    assert sched.waiting("B1") == 0


@pytest.mark.parametrize(("weight_a", "expected_a"), [(1, 500), (3, 750)])
def test_tenants_share_by_weight(db: redis.Redis, weight_a: int, expected_a: int) -> None:
    sched = Scheduler(db, depth=1)
    weigh(db, "a", weight_a)
    add(db, sched, "A1", "a", 5000)
    add(db, sched, "B1", "b", 5000)
    shares = batches(take(db, sched, 1000))
    assert abs(shares["A1"] - expected_a) <= 2


def test_a_tenant_with_more_batches_gets_no_more_than_its_share(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    for n in range(4):
        add(db, sched, f"A{n}", "a", 3000)
    add(db, sched, "B1", "b", 3000)
    shares = batches(take(db, sched, 800))
    assert abs(shares["B1"] - 400) <= 2  # the tenants split evenly
    assert all(abs(shares[f"A{n}"] - 100) <= 2 for n in range(4))  # and tenant a's batches split its half


def test_an_urgent_batch_goes_first_but_leaves_every_fourth_grant_to_the_others(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    add(db, sched, "A1", "a", 100)
    add(db, sched, "B1", "b", 100)
    add(db, sched, "C1", "c", 6, urgent_at=time.time() - 1)
    taken = take(db, sched, 10)[1:]  # after the one granted before C came
    assert [t for t in taken if t.startswith("C1")] == [f"C1:{i}" for i in range(6)]
    assert batches(taken[:8]) == {"C1": 6, "A1": 1, "B1": 1}  # three of every four grants, not all


def test_an_expired_batch_is_granted_nothing_and_its_tenant_not_charged(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    add(db, sched, "A1", "a", 10)
    add(db, sched, "A2", "a", 10, urgent_at=time.time() - 1)
    db.hset(keys.batch("A2"), "expires_at", int(time.time()) - 1)  # still in_progress until finalized
    assert batches(take(db, sched, 5)) == {"A1": 5}
    assert db.zscore(keys.SCHED_URGENT, "A2") is None


def test_many_finished_batches_do_not_stall_the_others(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=8)
    for n in range(300):
        add(db, sched, f"A{n:03}", "a", 1)
    add(db, sched, "B1", "b", 1000)
    taken = take(db, sched, 700)
    assert len(taken) == 700 and batches(taken)["B1"] == 400
    assert db.zcard(keys.sched_tenant_batches("a")) == 0  # each left when its one line was granted


def test_a_batch_that_stopped_running_is_granted_nothing(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    add(db, sched, "A1", "a", 100)
    add(db, sched, "B1", "b", 100)
    db.hset(keys.batch("A1"), "status", "cancelling")
    assert batches(take(db, sched, 10)) == {"A1": 1, "B1": 9}  # only the one granted before
    assert db.zscore(keys.sched_tenant_batches("a"), "A1") is None  # dropped from the scheduler


def test_lines_put_back_run_first_in_their_batch(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    add(db, sched, "A1", "a", 10)
    take(db, sched, 3)
    sched.put_back("A1", "a", [b"A1:1"], FAR, time.time())
    assert take(db, sched, 2) == ["A1:3", "A1:1"]


def test_enrolling_again_changes_nothing(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=2)
    add(db, sched, "A1", "a", 10)
    before = db.zrange(keys.SCHED_TENANTS, 0, -1, withscores=True)
    sched.enroll("A1", "a", FAR, time.time())
    assert db.zrange(keys.SCHED_TENANTS, 0, -1, withscores=True) == before
    assert db.llen(keys.LINE_QUEUE) == 2


def test_state_lost_with_redis_is_rebuilt_by_enrolling(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=2)
    add(db, sched, "A1", "a", 10)
    db.delete(keys.SCHED_TENANTS, keys.sched_tenant_batches("a"), keys.SCHED_URGENT, keys.LINE_QUEUE)
    assert sched.fill(time.time()) == 0  # nothing known: nothing granted
    sched.enroll("A1", "a", FAR, time.time())
    assert db.llen(keys.LINE_QUEUE) == 2


def test_grants_are_counted_per_tenant(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=1)
    weigh(db, "a", 2)
    add(db, sched, "A1", "a", 10)
    add(db, sched, "B1", "b", 10)
    take(db, sched, 5)
    granted = {k.decode(): int(v) for k, v in db.hgetall(keys.SCHED_GRANTED).items()}
    assert granted["a"] + granted["b"] == 6  # the first grant and one per take


def route_down(client: redis.Redis, route: str, waiting: bool) -> None:
    """The route's breaker is open; ``waiting``: some line already waits there (and probes)."""
    client.hset(keys.limit_health(route), "open_since", time.time())
    if waiting:
        client.zadd(keys.limit_waiters(route), {"token": time.time() + 5})


def on_route(client: redis.Redis, batch: str, route: str) -> None:
    client.hset(keys.batch(batch), "route", route)


def test_a_down_routes_batch_is_parked_and_returns_when_the_route_is_back(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=4)
    add(db, sched, "A1", "a", 100)
    on_route(db, "A1", "vllm")
    take(db, sched, 4)
    route_down(db, "vllm", waiting=True)
    add(db, sched, "B1", "b", 100)
    on_route(db, "B1", "openai")
    taken = take(db, sched, 24)
    assert batches(taken[4:]) == {"B1": 20}, "the down route's batch holds no worker thread"
    assert db.zscore(keys.SCHED_PARKED, "A1") is not None
    db.hdel(keys.limit_health("vllm"), "open_since")  # the probe got an answer: the route is back
    assert batches(take(db, sched, 24)[4:]) == {"A1": 10, "B1": 10}
    assert db.zcard(keys.SCHED_PARKED) == 0


def test_a_down_route_with_no_line_waiting_still_gets_one_to_probe_it(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=2)
    route_down(db, "vllm", waiting=False)
    add(db, sched, "A1", "a", 10)
    on_route(db, "A1", "vllm")
    assert take(db, sched, 2) == ["A1:0", "A1:1"]
    db.zadd(keys.limit_waiters("vllm"), {"token": time.time() + 5})  # that line now waits and probes
    assert take(db, sched, 4) == ["A1:2", "A1:3"], "nothing more is granted while it waits"
    db.zadd(keys.limit_waiters("vllm"), {"token": time.time() - 1})  # its entry lapsed: it gave up
    sched.fill(time.time())  # the watchdog's sweep (the queue is empty: no line begins to fill it)
    assert take(db, sched, 1) == ["A1:4"]


def test_a_batch_over_several_routes_is_never_parked(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=2)
    route_down(db, "vllm", waiting=True)
    add(db, sched, "A1", "a", 10)
    on_route(db, "A1", "")
    assert len(take(db, sched, 6)) == 6


def parked_batch(db: redis.Redis) -> Scheduler:
    """Batch A1 of tenant a, parked: its route went down and a line waits there."""
    sched = Scheduler(db, depth=2)
    add(db, sched, "A1", "a", 10)
    on_route(db, "A1", "vllm")
    route_down(db, "vllm", waiting=True)
    take(db, sched, 4)
    assert db.zscore(keys.SCHED_PARKED, "A1") is not None
    return sched


def test_a_parked_batch_that_ends_leaves_the_car_park(db: redis.Redis) -> None:
    sched = parked_batch(db)
    db.hset(keys.batch("A1"), "status", "cancelling")
    sched.fill(time.time())
    assert db.zcard(keys.SCHED_PARKED) == 0


def test_fills_folded_into_lines_look_at_parked_batches_at_most_every_tenth_of_a_second(db: redis.Redis) -> None:
    sched = parked_batch(db)
    now = time.time()
    sched._fill.run({"sched": sched.fill_call(now)})  # a line's fill: it looks, and the route is still down
    db.hdel(keys.limit_health("vllm"), "open_since")  # back
    sched._fill.run({"sched": sched.fill_call(now + 0.05)})
    assert db.zscore(keys.SCHED_PARKED, "A1") is not None, "not looked at again within 0.1 s"
    sched._fill.run({"sched": sched.fill_call(now + 0.2)})
    assert db.zcard(keys.SCHED_PARKED) == 0, "looked at again after it"


def test_a_lines_own_fill_grants_a_chunk_at_a_time_and_tenants_still_share_evenly(db: redis.Redis) -> None:
    sched = Scheduler(db, depth=16)
    add(db, sched, "A1", "a", 1000)
    add(db, sched, "B1", "b", 1000)
    lengths, taken = [], []
    for _ in range(400):  # as BEGIN_LINE does: a task leaves the queue, its script's fill runs
        message = db.rpop(keys.LINE_QUEUE)
        assert isinstance(message, bytes)
        taken.append(message.decode())
        sched._fill.run({"sched": sched.fill_call(time.time())})
        lengths.append(db.llen(keys.LINE_QUEUE))
    assert min(lengths) == 16 - GRANT_CHUNK + 1 and max(lengths) == 16  # refilled only a chunk short
    assert abs(batches(taken)["B1"] - 200) <= GRANT_CHUNK
    assert taken[:16] == [f"A1:{i}" for i in range(16)]  # a batch's own lines stay in order
