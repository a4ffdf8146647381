"""The watchdog's actions on a real Redis: what a stalled batch gets back, and what it does not."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from batchq.config import Settings
from batchq.domain.leases import Contact
from batchq.domain.models import Batch, Owner, RequestCounts
from batchq.domain.results import LOST, response_line
from batchq.domain.status import Status
from batchq.execution import finalize, watchdog
from batchq.observability.overview import read_overview
from batchq.runtime import Runtime, build_runtime
from batchq.storage import clock, keys, redis_client
from batchq.storage.batches import pack_offsets
from batchq.storage.locks import Lock
from batchq.storage.server import ServerInfo, server_info

pytestmark = pytest.mark.integration
TOTAL, DEPTH, LEASE = 10, 3, 60


class RecordingQueue:
    """A TaskQueue that records what the watchdog hands it; ``in_queue`` is what the line queue holds."""

    def __init__(self, in_queue: set[tuple[str, int]] | None = None, waiting: set[int] | None = None) -> None:
        self.requeued: list[int] = []
        self.in_queue = in_queue or set()
        self.waiting = waiting or set()  # the lines whose tasks wait in the scheduler
        self.events: list[str] = []

    def queued_lines(self) -> set[tuple[str, int]]:
        return self.in_queue

    def waiting_lines(self, batch_id: str) -> set[int]:
        return self.waiting

    def requeue_lines(self, batch_id: str, lines: list[tuple[int, int, int]]) -> None:
        self.requeued += [index for index, _, _ in lines]

    def finalize_batch(self, batch_id: str, countdown: float = 0) -> None:
        raise AssertionError("not finished")

    def notify(self, batch_id: str, event_type: str) -> None:
        self.events.append(event_type)


@pytest.fixture
def rt(redis_url: str, tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(_env_file=None, redis_url=redis_url, data_dir=tmp_path, queue_depth=DEPTH)  # type: ignore[call-arg]
    runtime = build_runtime(settings.model_copy(update={"line_lease_s": LEASE}), pool_size=4)
    runtime.redis.flushdb()  # this module's own server
    yield runtime
    runtime.redis.close()
    runtime.redis.connection_pool.disconnect()  # an explicit pool outlives close()


def stalled_batch(rt: Runtime, done: int, granted: int) -> str:
    """A running batch: lines [0, done) stored, [0, granted) granted, the rest waiting; idle for two leases."""
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
    for index in range(granted, TOTAL):
        rt.redis.lpush(keys.batch_pending(batch.id), f"task-{index}")
    rt.batches.set_fields(batch.id, progress_at=now - 2 * LEASE)
    return batch.id


def test_lines_granted_and_lost_are_sent_again_once_nothing_waits(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, granted=TOTAL), RecordingQueue()
    watchdog.check(rt, queue, batch_id, queue.in_queue)  # type: ignore[arg-type]
    assert queue.requeued == list(range(2, TOTAL))
    record = rt.batches.bookkeeping(batch_id)
    assert record is not None and (record.progress_at or 0) > time.time() - 5  # once per lease period


def test_lines_whose_tasks_are_still_in_the_queue_are_left_alone(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=2, granted=TOTAL)
    queue = RecordingQueue({(batch_id, 4), ("batch_other", 1)})
    watchdog.check(rt, queue, batch_id, queue.in_queue)  # type: ignore[arg-type]
    assert queue.requeued == []  # its tasks only wait their turn in the queue


def test_a_batch_with_waiting_lines_is_enrolled_again_not_resent(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, granted=5), RecordingQueue()  # its scheduler entry was lost
    watchdog.check(rt, queue, batch_id, queue.in_queue)  # type: ignore[arg-type]
    assert queue.requeued == []
    assert rt.redis.lrange(keys.LINE_QUEUE, 0, -1) == [b"task-7", b"task-6", b"task-5"]  # granted up to the depth
    assert rt.scheduler.waiting(batch_id) == TOTAL - 5 - DEPTH


def test_claiming_lines_of_a_batch_whose_input_vanished_still_accounts_for_them(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=2, granted=5)  # its input file was never written to disk
    batch = rt.batches.get(batch_id)
    assert batch is not None
    finalize.claim_lines(rt, batch, [5, 6], *LOST)
    stored = {int(index): orjson.loads(value[1:]) for index, value in rt.batches.iter_results(batch_id)}
    assert sorted(stored) == [0, 1, 5, 6]
    assert stored[5]["custom_id"] == "" and stored[5]["error"]["code"] == LOST[0]


def test_the_queue_is_read_afresh_before_lines_are_sent_again(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=2, granted=TOTAL)
    queue = RecordingQueue({(batch_id, 4)})  # granted after the sweep read the queue
    watchdog.check(rt, queue, batch_id, set())  # type: ignore[arg-type]
    assert queue.requeued == []


# --- after a Redis restart ---------------------------------------------------------------------


def lease(rt: Runtime, batch_id: str, index: int, written_at: float) -> None:
    rt.redis.hset(keys.batch_leases(batch_id), str(index), written_at + LEASE)


def test_leases_written_before_redis_started_run_out_the_rest_stay(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, granted=TOTAL), RecordingQueue()
    started = time.time() - 10  # the Redis process answering now
    lease(rt, batch_id, 2, started - 5)  # its worker held it under the Redis that was killed
    lease(rt, batch_id, 3, started + 5)  # renewed (or taken) since: a live worker holds it
    watchdog.check(rt, queue, batch_id, set(), stale=started)  # type: ignore[arg-type]
    assert queue.requeued == [2]
    assert set(rt.batches.leases(batch_id)) == {3}


def test_before_the_grace_a_lease_of_the_old_redis_is_left_to_its_worker(rt: Runtime) -> None:
    batch_id, queue = stalled_batch(rt, done=2, granted=TOTAL), RecordingQueue()
    lease(rt, batch_id, 2, time.time() - 1)
    watchdog.check(rt, queue, batch_id, set(), stale=None)  # type: ignore[arg-type]
    assert queue.requeued == []


def test_lines_that_are_nowhere_after_a_restart_are_sent_again_once(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=2, granted=6)  # lines 6.. wait in the scheduler
    queue = RecordingQueue({(batch_id, 3)}, waiting=set(range(6, TOTAL)))  # line 3 is in the line queue
    lease(rt, batch_id, 4, time.time())  # line 4 runs; line 5 is nowhere (its lease lost with Redis)
    rt.batches.set_fields(batch_id, progress_at=int(time.time()))  # the batch moves: no stall rule
    info = ServerInfo("run-2", time.time() - 60)
    watchdog.reconcile_once(rt, queue, info)  # type: ignore[arg-type]
    assert queue.requeued == [2, 5]  # 0 and 1 are done
    watchdog.reconcile_once(rt, queue, info)  # type: ignore[arg-type]
    assert queue.requeued == [2, 5]  # once per Redis process
    watchdog.reconcile_once(rt, queue, ServerInfo("run-3", time.time()))  # type: ignore[arg-type]
    assert queue.requeued == [2, 5, 2, 5]


# --- a finalize that cannot write --------------------------------------------------------------


def test_a_finalize_that_cannot_write_is_recorded_then_cleared_once_it_can(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id, queue = stalled_batch(rt, done=TOTAL, granted=TOTAL), RecordingQueue()
    writes = finalize.write_files

    def disk_full(*_: object, **__: object) -> tuple[str, str | None]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finalize, "write_files", disk_full)
    before = int(rt.redis.hget(keys.STATS, keys.STAT_FINALIZE_FAILURES) or 0)
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="batchq.finalize"), pytest.raises(OSError):
            finalize.finalize(rt, queue, batch_id)  # type: ignore[arg-type]
    assert [r.message for r in caplog.records].count("finalize could not write the result files; retrying") == 2
    assert int(rt.redis.hget(keys.STATS, keys.STAT_FINALIZE_FAILURES) or 0) == before + 2
    (row,) = [b for b in read_overview(rt.redis, []).batches if b.id == batch_id]
    assert row.status == "finalizing" and row.finalize_failing_since and "No space left" in (row.finalize_error or "")
    monkeypatch.setattr(finalize, "write_files", writes)  # space is back
    finalize.finalize(rt, queue, batch_id)  # type: ignore[arg-type]
    batch = rt.batches.get(batch_id)
    assert batch is not None and batch.status is Status.COMPLETED and queue.events == ["batch.completed"]
    assert rt.redis.hget(keys.batch(batch_id), "finalize_failing_since") is None


# --- a finalize that stalls past its lock ------------------------------------------------------


def test_a_finalize_that_stalled_past_its_lock_leaves_the_finished_files_alone(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = stalled_batch(rt, done=TOTAL, granted=TOTAL)
    rt.settings = rt.settings.model_copy(update={"line_lease_s": 1})  # no heartbeat here: the lock lives 1 s
    stalled, resume = threading.Event(), threading.Event()
    reads = rt.batches.iter_results

    def stall_first(batch: str) -> Iterator[tuple[bytes, bytes]]:
        if threading.current_thread().name == "stalled-finalize":
            stalled.set()
            resume.wait(30)
        return reads(batch)

    monkeypatch.setattr(rt.batches, "iter_results", stall_first)
    late = threading.Thread(target=finalize.finalize, args=(rt, RecordingQueue(), batch_id), name="stalled-finalize")
    late.start()
    assert stalled.wait(30)
    while rt.redis.exists(keys.batch_lock(batch_id)):  # its lock runs out while it stalls
        time.sleep(0.05)
    finalize.finalize(rt, RecordingQueue(), batch_id)  # type: ignore[arg-type]  # the watchdog's run finishes it
    batch = rt.batches.get(batch_id)
    assert batch is not None and batch.status is Status.COMPLETED and batch.output_file_id
    path = rt.files.path(batch.output_file_id)
    written = path.read_bytes()
    assert written.count(b"\n") == TOTAL
    resume.set()
    late.join(30)
    assert path.read_bytes() == written  # the late run put nothing in place
    assert rt.files.get(batch.output_file_id, Owner("acct")).bytes == len(written)


def test_a_lock_is_given_back_only_by_its_holder(rt: Runtime) -> None:
    batch_id = stalled_batch(rt, done=0, granted=TOTAL)
    key = keys.batch_lock(batch_id)
    mine = rt.batch_locks.take(key, 5)
    assert mine is not None and rt.batch_locks.take(key, 5) is None
    assert rt.batch_locks.held(mine, batch_id)
    rt.redis.set(key, "another holder's")  # mine ran out and another took it
    stale = Lock(key, mine.token)
    assert not rt.batch_locks.held(stale, batch_id)
    assert not rt.batch_locks.release(stale)
    assert rt.redis.get(key) == b"another holder's"


# --- a break with Redis in the middle of a sweep -----------------------------------------------


def run_out_lease(rt: Runtime, batch_id: str) -> None:
    """Lines 2.. all run out, line 2 a lease ago (its worker could not renew it: Redis was away)."""
    rt.redis.set(keys.RECONCILED_RUN, server_info(rt.redis).run_id)  # no once-per-Redis resend in these sweeps
    lease(rt, batch_id, 2, clock.sync(rt.redis) - LEASE - 1)


def test_a_retried_redis_command_anywhere_in_the_process_holds_the_sweep_back(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id, queue = stalled_batch(rt, done=2, granted=TOTAL), RecordingQueue()
    run_out_lease(rt, batch_id)
    monkeypatch.setattr(redis_client._trouble, "at", time.monotonic())  # a command was just retried
    watchdog.sweep(rt, queue, Contact())  # type: ignore[arg-type]
    assert queue.requeued == [], "nobody could renew it: it is not judged by its time"
    monkeypatch.setattr(redis_client._trouble, "at", time.monotonic() - 60)
    watchdog.sweep(rt, queue, Contact())  # type: ignore[arg-type]
    assert queue.requeued == [2]


def test_a_redis_error_on_one_batch_holds_back_the_rest_of_the_sweep(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = stalled_batch(rt, done=2, granted=TOTAL)
    second = "batch_" + "8" * 32
    rt.redis.copy(keys.batch(first), keys.batch(second))
    rt.redis.copy(keys.batch_offsets(first), keys.batch_offsets(second))
    rt.redis.sadd(keys.ACTIVE_BATCHES, second)
    for batch_id in (first, second):
        run_out_lease(rt, batch_id)
    monkeypatch.setattr(redis_client._trouble, "at", None)
    reads, failed = rt.batches.leases, []

    def break_once(batch_id: str) -> dict[int, float]:
        if not failed:
            failed.append(batch_id)
            raise redis.ConnectionError("Connection reset by peer")
        return reads(batch_id)

    monkeypatch.setattr(rt.batches, "leases", break_once)
    queue = RecordingQueue({(first, 9), (second, 9)})
    watchdog.sweep(rt, queue, Contact())  # type: ignore[arg-type]
    assert failed and queue.requeued == [], "the break counts for the batches after it"


def test_a_host_whose_clock_is_seconds_behind_stamps_leases_on_redis_time(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = stalled_batch(rt, done=2, granted=TOTAL)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 9.0)  # this host is 9 s behind Redis
    try:
        clock.sync(rt.redis)
        assert rt.batches.begin_line(batch_id, 5, 10).verdict.value == "go"
    finally:
        monkeypatch.undo()
        clock.sync(rt.redis)
    seconds, micros = rt.redis.time()
    until = rt.batches.leases(batch_id)[5]
    assert abs(until - (seconds + micros / 1e6 + 10)) < 1.0, "the lease runs 10 s on Redis's clock, not 1 s"
