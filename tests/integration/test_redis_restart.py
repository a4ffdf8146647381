"""Redis (append-only file) SIGKILLed mid-batch and restarted on the same port and directory: the
lines in flight are sent again within seconds of its return, not after their 120 s lease, and every
line is still stored exactly once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from batchq.local.stack import Stack
from tests.integration.conftest import FAST, _dump_logs
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

pytestmark = pytest.mark.integration
LINES = 160


@pytest.fixture(scope="module")
def durable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("durable")
    env = FAST | {"BATCHQ_LINE_LEASE_S": "120"}  # the default lease: what the lines in flight used to wait for
    stack = Stack(workdir, env_overrides=env, persist=True)
    try:
        yield stack.start(workers=1, concurrency=16)
    except BaseException:
        _dump_logs(workdir)
        raise
    finally:
        stack.stop()


@pytest.mark.parametrize("workers_too", [False, True], ids=["redis", "redis-and-worker"])
def test_a_batch_completes_within_30_s_of_a_redis_restart_every_line_once(durable: Stack, workers_too: bool) -> None:
    """With the worker SIGKILLed too, its leases and its Celery messages are gone with it, and the
    last second of Redis's writes may be: the watchdog sends those lines again."""
    stack = durable
    sdk = client(stack, user="restart")
    rows = [chat_row(f"r{i}", f"r {i}", latency_ms=400) for i in range(LINES)]
    batch = submit(sdk, rows)
    stack.wait_until(lambda: _done(stack, batch.id) >= 30, 30, "the batch is under way")
    stack.kill("redis")  # SIGKILL: the last second of writes may be lost with it
    if workers_too:
        stack.kill("worker0")
    time.sleep(3)
    stack.start_redis()  # the same port and directory: it reads its append-only file back
    restarted = time.monotonic()
    if workers_too:
        stack.start_worker("worker0", concurrency=16)
    final = wait(sdk, batch.id, timeout=60)
    took = time.monotonic() - restarted
    print(f"batch completed {took:.1f} s after the Redis restart ({'with' if workers_too else 'without'} the worker)")
    assert final.status == "completed"
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    assert took <= 30, f"{took:.1f} s after the restart"


def _done(stack: Stack, batch_id: str) -> int:
    with client(stack, user="restart") as sdk:  # closed: an SDK client left to the GC warns
        counts = sdk.batches.retrieve(batch_id).request_counts
    return 0 if counts is None else counts.completed + counts.failed
