"""``GET /batches/{id}/results`` (the results feed), ``Client.iter_results`` and ``batchq results``
against a real stack: lines while the batch runs, each once across reconnects and across its end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import orjson
import pytest

from batchq.client import APIError, AsyncClient, Client
from batchq.local.stack import Stack
from tests.integration.helpers import CHAT, TERMINAL, chat_row

pytestmark = pytest.mark.integration


def rows(prefix: str, n: int, latency_ms: int) -> list[dict[str, object]]:
    """``n`` requests; every 10th asks the mock for a 400 (an error line)."""
    made = []
    for i in range(n):
        mock = {"latency_ms": latency_ms} | ({"status": 400} if i % 10 == 3 else {})
        made.append(chat_row(f"{prefix}{i}", **mock))
    return made


def ids(lines: list[dict[str, object]]) -> list[str]:
    return [str(line["custom_id"]) for line in lines]


def test_a_follower_gets_every_line_once_while_running_and_after_the_end(stack: Stack) -> None:
    with Client(stack.api_url, stack.api_key, on_behalf_of="feed-a", timeout=30) as bq:
        batch = bq.submit(rows("f", 60, latency_ms=150), endpoint=CHAT)
        first = bq.results_page(batch.id, limit=5, wait=20)
        assert 1 <= len(first.lines()) <= 5 and first.status.value not in TERMINAL
        head = ids(first.lines())
        rest = ids(list(bq.iter_results(batch.id, first.cursor, limit=7)))  # follows until the end
        assert sorted(head + rest) == sorted(f"f{i}" for i in range(60))  # each line once
        ended = bq.get(batch.id)
        assert ended.status == "completed" and ended.request_counts.failed == 6

        again = list(bq.iter_results(batch.id, follow=False, limit=9))  # from the files now
        assert sorted(ids(again)) == sorted(head + rest)
        assert [line["response"]["status_code"] for line in again][-6:] == [400] * 6  # output, then errors
        tail = ids(list(bq.iter_results(batch.id, first.cursor, follow=False)))  # a cursor from the run
        assert sorted(tail) == sorted(rest)
        last = bq.results_page(batch.id, first.cursor, limit=10_000)
        assert last.ended and bq.results_page(batch.id, last.cursor).data == b""


def test_the_feed_is_scoped_and_checks_its_cursor(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}", "X-On-Behalf-Of": "feed-b"}
    with Client(stack.api_url, stack.api_key, on_behalf_of="feed-b", timeout=30) as bq:
        batch = bq.wait(bq.submit(rows("s", 3, latency_ms=0), endpoint=CHAT).id, poll_interval=0.1, timeout=60)
        for prefix in ("/v1", "/api/v1/llm"):
            url = f"{stack.api_url}{prefix}/batches/{batch.id}/results"
            mine = httpx2.get(url, headers=headers)
            assert mine.status_code == 200 and mine.headers["content-type"].startswith("application/jsonl")
            assert mine.headers["x-batchq-batch-status"] == "completed"
            assert mine.headers["x-batchq-has-more"] == "false" and len(mine.content.splitlines()) == 3
            theirs = httpx2.get(url, headers=headers | {"X-On-Behalf-Of": "feed-other"})
            assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
            for bad in ("x", "1.1.0.0", "0.5.0.0"):  # not a cursor; fewer bytes than lines; not at a line
                refused = httpx2.get(url, headers=headers, params={"after": bad})
                assert refused.status_code == 400 and refused.json()["error"]["param"] == "after", bad
        with pytest.raises(APIError) as missing:
            bq.results_page("batch_nope")
        assert missing.value.status_code == 404
        limits = httpx2.get(f"{stack.api_url}/v1/batches/limits", headers=headers).json()
        assert limits["object"] == "batchq.limits" and limits["max_requests_per_batch"] == 50_000


def test_async_follower_and_the_cli_resume_from_a_cursor(stack: Stack, tmp_path: Path) -> None:
    with Client(stack.api_url, stack.api_key, on_behalf_of="feed-c", timeout=30) as bq:
        batch = bq.submit(rows("c", 30, latency_ms=100), endpoint=CHAT)
        first = bq.results_page(batch.id, limit=4, wait=20)

    async def follow() -> list[str]:
        async with AsyncClient(stack.api_url, stack.api_key, on_behalf_of="feed-c", timeout=30) as abq:
            return ids([line async for line in abq.iter_results(batch.id, first.cursor, limit=5)])

    rest = asyncio.run(follow())
    assert sorted(ids(first.lines()) + rest) == sorted(f"c{i}" for i in range(30))

    cursor_file = tmp_path / "cursor"
    cursor_file.write_text(first.cursor)
    env = os.environ | {"BATCHQ_API_URL": stack.api_url, "BATCHQ_API_KEY": stack.api_key}
    command = [sys.executable, "-m", "batchq", "results", batch.id, "--follow", "--cursor-file", str(cursor_file)]
    done = subprocess.run(
        command, env=env | {"BATCHQ_ON_BEHALF_OF": "feed-c"}, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert sorted(ids([orjson.loads(line) for line in done.stdout.splitlines()])) == sorted(rest)
    assert cursor_file.read_text().strip() != first.cursor and b"Next cursor" in done.stderr
