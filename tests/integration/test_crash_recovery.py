"""Workers killed mid-batch: every line still ends up exactly once in the output or error file."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from batchq.stack import Stack
from tests.integration.conftest import start_stack
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

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
