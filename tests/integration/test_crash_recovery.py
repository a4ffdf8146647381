"""Workers killed mid-batch: every line still ends up exactly once in the output or error file,
and the lines (and upstream slots) the dead worker held come back within a lease.

The route's window is no larger than the dead worker's slots (8 of 8), and the upstream timeout is
a minute: a slot that lived until the upstream timeout (as before the worker's heartbeat) would
hold the whole window for 90 s, past the wait below.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from batchq.local.stack import Stack
from batchq.storage import keys
from batchq.storage.scheduler import Scheduler
from tests.integration.conftest import FAST, start_stack
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait
from workers.publish import line_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("crashy")
    small = {"BATCHQ_UPSTREAM_MAX_IN_FLIGHT": "8", "BATCHQ_UPSTREAM_TIMEOUT_S": "60"}  # default lease (10 s)
    running = start_stack(workdir, small, workers=1, concurrency=8)
    yield running
    running.stop()


def test_sigkill_of_a_worker_mid_batch_gives_its_lines_and_slots_back_within_a_lease(crashy: Stack) -> None:
    sdk = client(crashy, user="crash")
    rows = [chat_row(f"k{i}", f"k {i}", latency_ms=150) for i in range(300)]
    batch = submit(sdk, rows)
    crashy.wait_until(lambda: _done(crashy, batch.id) >= 40, 30, "the batch is under way")
    crashy.kill("worker0")  # SIGKILL: no warm shutdown, no acks; its leases and 8 slots left behind
    killed = time.monotonic()
    crashy.start_worker("worker1", concurrency=8)
    final = wait(sdk, batch.id, timeout=30 - (time.monotonic() - killed))
    print(f"\nworker SIGKILL: batch completed {time.monotonic() - killed:.1f}s after the kill")
    assert final.status == "completed"
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])


def test_every_process_sigkilled_and_started_again_resumes_the_batch(tmp_path: Path) -> None:
    """API, worker and Redis (with its append-only file) killed at once, as a power cut would, and
    started again as separate processes: the batch completes within 30 s, every line once."""
    env = {"BATCHQ_UPSTREAM_TIMEOUT_S": "60"}  # a ghost slot living that long would hold the window
    stack = Stack(tmp_path, env_overrides=FAST | env, persist=True)
    try:
        stack.start(workers=1, concurrency=32)
        sdk = client(stack, user="crash")
        rows = [chat_row(f"p{i}", f"p {i}", latency_ms=100) for i in range(600)]
        batch = submit(sdk, rows)
        stack.wait_until(lambda: _done(stack, batch.id) >= 150, 30, "the batch is under way")
        for name in ("worker0", "api", "redis"):
            stack.kill(name)
        restarted = time.monotonic()
        stack.start_redis()  # replays its append-only file
        stack.start_api()
        stack.start_worker("worker1", concurrency=32)
        ready = time.monotonic() - restarted
        final = wait(sdk, batch.id, timeout=30)
        took = time.monotonic() - restarted
        print(f"\nall killed: worker ready {ready:.1f}s after the restart, batch done {took:.1f}s after it")
        assert final.status == "completed"
        assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    finally:
        stack.stop()


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
