"""Cancel, expiry and the watchdog, against real processes."""

from __future__ import annotations

import time

import pytest

from batchq.api.deps import account_of
from batchq.config import Settings
from batchq.domain.ids import new_batch_id, new_file_id
from batchq.domain.models import Batch, Owner, RequestCounts
from batchq.domain.results import response_line
from batchq.domain.status import Status
from batchq.local.stack import Stack
from batchq.runtime import build_runtime
from tests.integration.helpers import CHAT, assert_exactly_once, chat_row, client, jsonl, results, submit, wait

pytestmark = pytest.mark.integration


def slow_rows(count: int, latency_ms: int, prefix: str = "s") -> list[dict[str, object]]:
    return [chat_row(f"{prefix}{i}", f"{prefix} {i}", latency_ms=latency_ms) for i in range(count)]


def test_cancel_mid_run_keeps_partial_results(stack: Stack) -> None:
    sdk = client(stack, user="canceller")
    rows = slow_rows(80, 400)
    batch = submit(sdk, rows)
    stack.wait_until(lambda: _done(sdk, batch.id) >= 16, 30, "some lines finish")
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and isinstance(cancelling.cancelling_at, int)
    assert sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")  # twice is harmless
    started = time.monotonic()
    final = wait(sdk, batch.id, timeout=30)
    assert final.status == "cancelled" and isinstance(final.cancelled_at, int)
    assert time.monotonic() - started < 15
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])  # type: ignore[misc]
    output, errors = results(sdk, final)
    assert len(output) >= 16
    cancelled = [e for e in errors if e["error"] and e["error"]["code"] == "batch_cancelled"]
    assert cancelled and len(cancelled) == len(errors)
    assert all(e["response"] is None for e in cancelled)


def test_expiry_keeps_finished_lines_and_marks_the_rest(stack: Stack) -> None:
    sdk = client(stack, user="expirer")
    rows = slow_rows(200, 800, prefix="e")
    batch = submit(sdk, rows, window="3s")
    assert batch.expires_at == batch.created_at + 3
    final = wait(sdk, batch.id, timeout=30)
    assert final.status == "expired" and isinstance(final.expired_at, int)
    assert final.expired_at >= batch.created_at + 3
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])  # type: ignore[misc]
    output, errors = results(sdk, final)
    assert output, "lines finished before expiry are kept"
    assert errors and all(e["error"]["code"] == "batch_expired" for e in errors)
    assert "completion window expired" in errors[0]["error"]["message"]


def test_watchdog_finalizes_a_batch_whose_callback_never_ran(stack: Stack) -> None:
    rt = build_runtime(Settings(redis_url=stack.redis_url or "", data_dir=stack.workdir / "data"), pool_size=4)
    owner = Owner(account_of(stack.api_key), "stuck")
    batch_id, file_id = new_batch_id(), new_file_id()
    temp = rt.files.temp_path()
    temp.write_bytes(jsonl([chat_row("a"), chat_row("b")]))
    rt.files.register(file_id, owner, "in.jsonl", "batch", temp)
    now = int(time.time())
    record = Batch(
        id=batch_id, endpoint=CHAT, input_file_id=file_id, completion_window="24h", status=Status.IN_PROGRESS,
        created_at=now, in_progress_at=now, expires_at=now + 86400, request_counts=RequestCounts(total=2),
    )  # fmt: skip
    rt.batches.create(record, owner)
    for index, custom_id in enumerate(("a", "b")):
        rt.batches.complete_line(batch_id, index, response_line(custom_id, 200, "req", {"ok": True}))
    sdk = client(stack, user="stuck")
    final = wait(sdk, batch_id, timeout=20)
    assert final.status == "completed"
    assert_exactly_once(sdk, final, ["a", "b"])


def _done(sdk: object, batch_id: str) -> int:
    counts = sdk.batches.retrieve(batch_id).request_counts  # type: ignore[attr-defined]
    return 0 if counts is None else counts.completed + counts.failed


def test_expired_files_are_deleted_with_their_bytes(stack: Stack) -> None:
    rt = build_runtime(Settings(redis_url=stack.redis_url or "", data_dir=stack.workdir / "data"), pool_size=2)
    sdk = client(stack, user="expiring")
    uploaded = sdk.files.create(file=("old.jsonl", jsonl([chat_row("a")])), purpose="batch")
    path = rt.files.path(uploaded.id)
    assert path.exists()
    assert rt.files.delete_expired(now=time.time() + 400 * 86_400) >= 1
    assert not path.exists()
    assert uploaded.id not in [f.id for f in sdk.files.list()]
    rt.redis.close()


def test_an_expired_input_file_stays_while_its_batch_runs(stack: Stack) -> None:
    rt = build_runtime(Settings(redis_url=stack.redis_url or "", data_dir=stack.workdir / "data"), pool_size=2)
    sdk = client(stack, user="expiring-input")
    rows = slow_rows(6, 3500, prefix="keep")  # runs for about 3.5 s (the upstream timeout is 5 s here)
    batch = submit(sdk, rows)
    stack.wait_until(lambda: sdk.batches.retrieve(batch.id).status == "in_progress", 20, "in progress")
    rt.redis.zadd("batchq:files:expiry", {batch.input_file_id: time.time() - 1})  # its lifetime ran out
    time.sleep(2.2)  # the watchdog sweeps every second here
    assert rt.files.path(batch.input_file_id).exists(), "the input of a running batch was deleted"
    final = wait(sdk, batch.id)
    assert_exactly_once(sdk, final, [str(r["custom_id"]) for r in rows])
    assert final.request_counts is not None and final.request_counts.failed == 0
    rt.files.delete_expired(now=time.time() + 2 * 3600)  # once the batch has ended, it goes
    assert not rt.files.path(batch.input_file_id).exists()
    rt.redis.close()
