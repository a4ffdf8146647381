"""The watchdog's window actions on a real Redis: what a stalled batch gets back, and what it does not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batchq.config import Settings
from batchq.domain.models import Batch, Owner, RequestCounts
from batchq.domain.results import LOST, response_line
from batchq.domain.status import Status
from batchq.embedded import free_port, start_redis
from batchq.execution import finalize, watchdog
from batchq.runtime import Runtime, build_runtime
from batchq.storage import keys
from batchq.storage.batches import pack_offsets

pytestmark = pytest.mark.integration
TOTAL, WINDOW, LEASE = 10, 3, 60


class RecordingQueue:
    """A TaskQueue that records what the watchdog hands it."""

    def __init__(self) -> None:
        self.requeued: list[int] = []

    def requeue_lines(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        self.requeued += [index for index, _, _ in lines]

    def finalize_batch(self, batch_id: str, countdown: float = 0) -> None:
        raise AssertionError("not finished")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    server = start_redis(port, Path(tmp_path_factory.mktemp("redis")))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def rt(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(_env_file=None, redis_url=redis_url, data_dir=tmp_path, dispatch_window=WINDOW)  # type: ignore[call-arg]
    runtime = build_runtime(settings.model_copy(update={"line_lease_s": LEASE}), pool_size=4)
    runtime.redis.flushdb()  # this module's own server
    yield runtime
    runtime.redis.close()


def stalled_batch(rt: Runtime, done: int, dispatched: int) -> str:
    """A running batch: lines [0, done) stored, [0, dispatched) sent, the rest waiting; idle for two leases."""
    now = int(time.time())
    batch = Batch(
        id="batch_" + "7" * 32, endpoint="/v1/chat/completions", input_file_id="file-" + "7" * 32,
        completion_window="24h", status=Status.IN_PROGRESS, created_at=now - 3 * LEASE,
        in_progress_at=now - 3 * LEASE, expires_at=now + 86400, request_counts=RequestCounts(total=TOTAL),
    )  # fmt: skip
    rt.batches.create(batch, Owner("acct"))
    rt.batches.save_offsets(batch.id, pack_offsets([(i * 10, 10) for i in range(TOTAL)]))
    for index in range(done):
        rt.batches.complete_lines(batch.id, [(index, response_line(f"c{index}", 200, "req", {}))])
    for index in range(dispatched, TOTAL):
        rt.redis.lpush(keys.batch_pending(batch.id), f"task-{index}")
    rt.batches.set_fields(batch.id, progress_at=now - 2 * LEASE, queued=0)
    return batch.id


def test_an_empty_queue_gets_the_dispatched_lines_again_and_the_next_window(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, dispatched=5), RecordingQueue()
    watchdog.check(rt, queue, batch_id, queue_length=0)  # type: ignore[arg-type]
    assert queue.requeued == [2, 3, 4]  # sent before, never stored; not the lines still waiting
    assert rt.redis.lrange(keys.LINE_QUEUE, 0, -1) == [b"task-7", b"task-6", b"task-5"]
    assert rt.batches.pending(batch_id) == TOTAL - 5 - WINDOW and rt.batches.queued(batch_id) == 3 + WINDOW


def test_a_lost_window_behind_other_batches_gets_the_next_window_only(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, dispatched=5), RecordingQueue()
    watchdog.check(rt, queue, batch_id, queue_length=500)  # type: ignore[arg-type]
    assert queue.requeued == []
    assert rt.batches.pending(batch_id) == TOTAL - 5 - WINDOW and rt.batches.queued(batch_id) == WINDOW
    progress_at = float(rt.batches.field(batch_id, "progress_at") or 0)
    assert progress_at > time.time() - 5  # one window per lease period, not one per sweep
    watchdog.check(rt, queue, batch_id, queue_length=500)  # type: ignore[arg-type]
    assert rt.batches.pending(batch_id) == TOTAL - 5 - WINDOW


def test_a_window_still_queued_behind_other_batches_is_left_alone(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, dispatched=5), RecordingQueue()
    rt.batches.add_queued(batch_id, 3)  # its three tasks wait their turn in a busy queue
    watchdog.check(rt, queue, batch_id, queue_length=500)  # type: ignore[arg-type]
    assert queue.requeued == [] and rt.batches.pending(batch_id) == TOTAL - 5


def test_claiming_lines_of_a_batch_whose_input_vanished_still_accounts_for_them(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=2, dispatched=5)  # its input file was never written to disk
    batch = rt.batches.get(batch_id)
    assert batch is not None
    finalize.claim_lines(rt, batch, [5, 6], *LOST)
    stored = {int(index): orjson.loads(value[1:]) for index, value in rt.batches.iter_results(batch_id)}
    assert sorted(stored) == [0, 1, 5, 6]
    assert stored[5]["custom_id"] == "" and stored[5]["error"]["code"] == LOST[0]


def test_a_drifted_queued_count_is_capped_by_the_queue_length(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, dispatched=5), RecordingQueue()
    rt.batches.add_queued(batch_id, 40)  # tasks counted in but lost with a worker
    rt.redis.lpush(keys.LINE_QUEUE, b"someone-else")
    watchdog.check(rt, queue, batch_id, queue_length=1)  # type: ignore[arg-type]
    assert rt.batches.pending(batch_id) == TOTAL - 5, "one task in the queue could be this batch's: wait"
    rt.redis.delete(keys.LINE_QUEUE)
    watchdog.check(rt, queue, batch_id, queue_length=0)  # type: ignore[arg-type]
    assert queue.requeued == [2, 3, 4] and rt.batches.queued(batch_id) == 3 + WINDOW  # counted afresh
