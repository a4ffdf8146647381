"""A gateway's rate limit is a reason to wait, never to fail a line: a real worker behind the mock's
fixed window (429 at once, without Retry-After, over 30 requests per 3 s)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from batchq.local.stack import Stack
from tests.integration.conftest import FAST
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("gateway")
    env = FAST | {"BATCHQ_UPSTREAM_MAX_ATTEMPTS": "2"}  # two attempts a line, and far more 429s than that
    stack = Stack(workdir, env_overrides=env, mock_args=["--window-limit", "30", "--window-s", "3"])
    try:
        yield stack.start(workers=1, concurrency=16)
    finally:
        stack.stop()


def test_429s_without_retry_after_fail_no_line_and_spend_no_attempt(gateway: Stack) -> None:
    sdk = client(gateway, user="gateway")
    rows = [chat_row(f"g{i}", f"gateway {i}") for i in range(120)]  # four windows' worth
    batch = wait(sdk, submit(sdk, rows).id, timeout=120)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.failed == 0
    assert_exactly_once(sdk, batch, [r["custom_id"] for r in rows])
    seen = httpx2.get(gateway.upstream_url + "/_stats").json()
    assert seen["by_status"]["200"] == 120
    assert seen["by_status"]["429"] > 2 * 120 / 30  # held back in every window: more 429s than attempts allowed
