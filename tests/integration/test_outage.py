"""An upstream outage with real processes: the upstream is killed mid-batch and started again.

Retries here are fast (FAST: 4 attempts, at most 0.2 s apart), so without the route's breaker
every line in flight during the outage would fail within a second. With it, lines wait.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import redis

from batchq.local.embedded import free_port
from batchq.local.stack import Stack
from batchq.storage import keys
from tests.integration.conftest import start_stack
from tests.integration.helpers import assert_exactly_once, chat_row, client, submit, wait

pytestmark = pytest.mark.integration
OUTAGE_S = 4.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"BATCHQ_UPSTREAM_PROBE_S": "0.25", "BATCHQ_UPSTREAM_BREAKER_FAILURES": "3"}
    running = start_stack(tmp_path_factory.mktemp("outage"), env, workers=1, concurrency=16)
    yield running
    running.stop()


def test_lines_wait_out_an_upstream_outage_and_none_fails(stack: Stack) -> None:
    sdk = client(stack, user="outage")
    rows = [chat_row(f"line{i}", latency_ms=20) for i in range(300)]
    batch = submit(sdk, rows)
    stack.wait_until(lambda: _done(sdk, batch.id) >= 30, 30, "the batch to run")
    stack.kill("upstream")
    killed = time.monotonic()
    time.sleep(OUTAGE_S / 2)
    assert _open_since(stack) is not None, "the route's breaker is open"
    stalled = _done(sdk, batch.id)
    env = os.environ | {"BATCHQ_REDIS_URL": stack.redis_url or ""}
    top = subprocess.run([sys.executable, "-m", "batchq", "top", "--json"], env=env, capture_output=True, timeout=30)
    assert "default" in orjson.loads(top.stdout)["down_since"], "batchq top shows the route down"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))
    assert _done(sdk, batch.id) == stalled, "nothing is stored while the upstream is down"
    stack.start_upstream()  # the same port
    final = wait(sdk, batch.id, timeout=60)
    assert final.status == "completed"
    assert final.request_counts is not None and final.request_counts.failed == 0
    assert_exactly_once(sdk, final, [str(row["custom_id"]) for row in rows])
    assert _open_since(stack) is None, "closed again"
    assert httpx2.get(stack.api_url + "/metrics").text.count('batchq_route_state{route="default"} 0.0') == 1


def test_a_down_route_holds_few_worker_threads_and_other_routes_go_on(tmp_path: Path) -> None:
    """8 worker threads; a batch on a dead route and, after it, one on a live route. Without the
    scheduler parking the dead route's batch, its lines would hold every thread until they gave up."""
    live, dead = free_port(), free_port()
    routes = [
        {"name": "dead", "url": f"http://127.0.0.1:{dead}", "models": ["gone"]},
        {"name": "default", "url": f"http://127.0.0.1:{live}"},
    ]
    env = {
        "BATCHQ_UPSTREAMS": orjson.dumps(routes).decode(), "BATCHQ_UPSTREAM_PROBE_S": "0.25",
        "BATCHQ_UPSTREAM_BREAKER_FAILURES": "3", "BATCHQ_UPSTREAM_OUTAGE_WAITERS": "2",
    }  # fmt: skip
    stack = start_stack(tmp_path, env, upstream_port=live, workers=1, concurrency=8)
    try:
        sdk = client(stack, user="routes")
        stuck = submit(sdk, [_on_model(chat_row(f"d{i}"), "gone") for i in range(200)])
        stack.wait_until(lambda: _open_since(stack, "dead") is not None, 30, "the dead route's breaker to open")
        rows = [chat_row(f"live{i}", latency_ms=20) for i in range(100)]
        final = wait(sdk, submit(sdk, rows).id, timeout=40)
        assert final.status == "completed", "the live route's batch ran beside the dead route's"
        assert_exactly_once(sdk, final, [str(row["custom_id"]) for row in rows])
        assert _done(sdk, stuck.id) == 0, "the dead route's lines wait: none failed"
        with redis.Redis.from_url(stack.redis_url or "") as r:
            assert r.zscore(keys.SCHED_PARKED, stuck.id) is not None, "its batch is parked"
            assert r.zcard(keys.limit_waiters("dead")) <= 2
    finally:
        stack.stop()


def _on_model(row: dict[str, Any], model: str) -> dict[str, Any]:
    row["body"]["model"] = model
    return row


def _open_since(stack: Stack, route: str = "default") -> bytes | None:
    with redis.Redis.from_url(stack.redis_url or "") as r:
        return r.hget(keys.limit_health(route), "open_since")  # type: ignore[return-value]


def _done(sdk: object, batch_id: str) -> int:
    counts = sdk.batches.retrieve(batch_id).request_counts  # type: ignore[attr-defined]
    return (counts.completed + counts.failed) if counts else 0
