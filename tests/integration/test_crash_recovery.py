"""Workers killed mid-batch: every line still ends up exactly once in the output or error file."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx2
import pytest
import redis

from batchq.stack import Stack
from batchq.storage import keys
from batchq.storage.scheduler import Scheduler
from tests.integration.conftest import start_stack
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait
from workers.publish import line_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("crashy")
    running = start_stack(workdir, {"BATCHQ_LINE_LEASE_S": "3"}, workers=1, concurrency=8)
    yield running
    running.stop()


def test_sigkill_of_a_worker_mid_batch_loses_and_duplicates_nothing(crashy: Stack) -> None:
    sdk = client(crashy, user="crash")
    rows = [chat_row(f"k{i}", f"k {i}", latency_ms=300) for i in range(60)]
    batch = submit(sdk, rows)
    crashy.wait_until(lambda: _done(crashy, batch.id) >= 10, 30, "the batch is under way")
    crashy.kill("worker0")  # SIGKILL: no warm shutdown, no acks, leases left behind
    crashy.start_worker("worker1", concurrency=8)
    final = wait(sdk, batch.id, timeout=90)
    assert final.status == "completed"
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    stats = httpx2.get(crashy.upstream_url + "/_stats").json()
    assert stats["success_bodies"] == 60


def _done(stack: Stack, batch_id: str) -> int:
    with client(stack, user="crash") as sdk:  # closed: an SDK client left to the GC warns
        counts = sdk.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed + counts.failed


def test_warm_shutdown_puts_the_line_tasks_it_took_but_never_ran_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A line task's delivery is kept in the worker's memory only (workers/kombu_redis.py): after a
    warm shutdown every unfinished line is still queued or waiting, none lost in the worker. (With
    the threads pool a worker holds few tasks it has not started; tests/unit/test_kombu_qos.py
    checks that those go back.)"""
    stack = start_stack(tmp_path_factory.mktemp("warm"), workers=1, concurrency=4)
    try:
        sdk = client(stack, user="crash")  # the user _done reads as
        rows = [chat_row(f"w{i}", f"w {i}", latency_ms=400) for i in range(40)]
        batch = submit(sdk, rows)
        stack.wait_until(lambda: _done(stack, batch.id) >= 4, 30, "the batch is under way")
        stack.kill("worker0", signal.SIGTERM)  # warm: running lines finish, prefetched ones go back
        r = redis.Redis.from_url(stack.redis_url or "")
        done = bin(int.from_bytes(r.get(keys.batch_done(batch.id)) or b"\0", "big")).count("1")
        scheduler = Scheduler(r, depth=64)
        queued = {line_of(m) for m in scheduler.queued_messages()}
        waiting = {line_of(m) for m in scheduler.waiting_messages(batch.id)}
        assert done + len(queued | waiting) == 40  # nothing lost in the worker's memory
        stack.start_worker("worker1", concurrency=4)
        final = wait(sdk, batch.id, timeout=60)
        assert final.status == "completed"
        assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    finally:
        stack.stop()
