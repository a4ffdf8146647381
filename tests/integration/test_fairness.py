"""Fair scheduling with real workers: the order in which tenants' lines are stored.

One worker with 4 threads and a line queue of 2 granted tasks, so the order is the scheduler's.
The assertions are about counts sampled while the batches run (which lines were stored before
which), never about how long anything took.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from openai import OpenAI

from batchq.local.stack import Stack
from batchq.storage.apikeys import ApiKeyStore
from tests.integration.conftest import start_stack
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

pytestmark = pytest.mark.integration
LATENCY_MS = 40


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"BATCHQ_QUEUE_DEPTH": "2", "BATCHQ_MAX_ACTIVE_BATCHES_PER_KEY": "0"}
    stack = start_stack(tmp_path_factory.mktemp("fair"), env, workers=1, concurrency=4)
    yield stack
    stack.stop()


def tenant(stack: Stack, weight: float = 1.0) -> OpenAI:
    """A new managed key (a tenant of its own) with ``weight``."""
    _, key = ApiKeyStore(redis.Redis.from_url(stack.redis_url or "")).create("tenant", weight)
    return client(stack, key=key)


def rows(tag: str, count: int) -> list[dict[str, object]]:
    return [chat_row(f"{tag}{i}", latency_ms=LATENCY_MS) for i in range(count)]


def done(sdk: OpenAI, batch_ids: list[str]) -> int:
    total = 0
    for batch_id in batch_ids:
        counts = sdk.batches.retrieve(batch_id).request_counts
        total += (counts.completed + counts.failed) if counts else 0
    return total


def samples(a: OpenAI, a_ids: list[str], b: OpenAI, b_ids: list[str], lines_each: int) -> list[tuple[int, int]]:
    """(a's lines done, b's lines done) sampled until one tenant has no line left to run."""
    seen: list[tuple[int, int]] = []
    while True:
        counts = (done(a, a_ids), done(b, b_ids))
        if max(counts[0], counts[1]) >= lines_each - 4:  # near the end one tenant runs alone
            return seen
        seen.append(counts)


def finish(sdk: OpenAI, batch_ids: list[str], all_rows: dict[str, list[dict[str, object]]]) -> None:
    for batch_id in batch_ids:
        batch = wait(sdk, batch_id, timeout=120)
        assert_exactly_once(sdk, batch, [str(r["custom_id"]) for r in all_rows[batch_id]])


def test_two_tenants_started_together_advance_together(narrow: Stack) -> None:
    a, b = tenant(narrow), tenant(narrow)
    a_rows, b_rows = rows("a", 150), rows("b", 150)
    a_id, b_id = submit(a, a_rows).id, submit(b, b_rows).id
    seen = [s for s in samples(a, [a_id], b, [b_id], 150) if sum(s) >= 20]
    assert len(seen) >= 3
    assert all(abs(x - y) <= 12 for x, y in seen), seen  # 4 threads and 2 queued: a few lines apart at most
    finish(a, [a_id], {a_id: a_rows})
    finish(b, [b_id], {b_id: b_rows})


def test_a_tenant_with_four_batches_gets_no_more_than_one_with_one(narrow: Stack) -> None:
    a, b = tenant(narrow), tenant(narrow)
    a_rows = {submit(a, r).id: r for r in (rows(f"a{n}-", 60) for n in range(4))}
    b_rows = rows("b", 240)
    b_id = submit(b, b_rows).id
    seen = [s for s in samples(a, list(a_rows), b, [b_id], 240) if sum(s) >= 40]
    assert seen, "no sample while both tenants ran"
    assert all(0.35 <= y / (x + y) <= 0.65 for x, y in seen), seen
    finish(a, list(a_rows), a_rows)
    finish(b, [b_id], {b_id: b_rows})


def test_weights_share_the_workers_in_proportion(narrow: Stack) -> None:
    heavy, light = tenant(narrow, weight=3), tenant(narrow, weight=1)
    h_rows, l_rows = rows("h", 240), rows("l", 240)
    h_id, l_id = submit(heavy, h_rows).id, submit(light, l_rows).id
    seen = [s for s in samples(heavy, [h_id], light, [l_id], 240) if sum(s) >= 60]
    assert seen, "no sample while both tenants ran"
    assert all(0.65 <= x / (x + y) <= 0.85 for x, y in seen), seen
    finish(heavy, [h_id], {h_id: h_rows})
    finish(light, [l_id], {l_id: l_rows})


def test_a_newcomers_small_batch_finishes_while_a_big_one_has_most_of_its_lines_left(narrow: Stack) -> None:
    big, small = tenant(narrow), tenant(narrow)
    big_rows = rows("big", 400)
    big_id = submit(big, big_rows).id
    narrow.wait_until(lambda: done(big, [big_id]) >= 20, 60, "the big batch to run")
    small_rows = rows("small", 5)
    small_batch = wait(small, submit(small, small_rows).id, timeout=60)
    assert small_batch.status == "completed"
    assert done(big, [big_id]) < 200, "the small batch waited behind the big one"
    finish(big, [big_id], {big_id: big_rows})
