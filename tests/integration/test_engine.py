"""The execution engine: shared caps under a 429 storm, duplicate deliveries, timeouts, routing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx2
import orjson
import pytest
from celery import Celery
from openai import OpenAI

from batchq.config import Settings
from batchq.local.embedded import free_port, wait_for
from batchq.local.stack import Stack, _http_ok
from batchq.runtime import build_runtime
from tests.integration.conftest import FAST
from tests.integration.helpers import assert_exactly_once, chat_row, client, results, submit, wait

pytestmark = pytest.mark.integration


def stats(url: str) -> dict[str, object]:
    result: dict[str, object] = httpx2.get(url + "/_stats").json()
    return result


@pytest.fixture(scope="module")
def stormy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stormy")
    env = {"BATCHQ_UPSTREAM_MAX_IN_FLIGHT": "6", "BATCHQ_UPSTREAM_MAX_ATTEMPTS": "20"}
    stack = Stack(workdir, env_overrides=FAST | env, mock_args=["--fail-429", "0.3", "--retry-after-s", "0.2"])
    try:
        yield stack.start(workers=2, concurrency=12)
    finally:
        stack.stop()


def test_a_429_storm_completes_and_never_exceeds_the_shared_cap(stormy: Stack) -> None:
    sdk = client(stormy, user="storm")
    rows = [chat_row(f"t{i}", f"storm {i}", latency_ms=100) for i in range(80)]
    batch = wait(sdk, submit(sdk, rows).id, timeout=120)
    assert batch.status == "completed"
    assert_exactly_once(sdk, batch, [r["custom_id"] for r in rows])
    assert batch.request_counts is not None and batch.request_counts.failed == 0
    seen = stats(stormy.upstream_url)
    assert seen["peak_in_flight"] <= 6, seen  # two workers x 12 threads, one cap of 6
    assert seen["by_status"].get("429", 0) > 0  # type: ignore[attr-defined]


def test_a_task_delivered_twice_is_run_once(stack: Stack) -> None:
    sdk = client(stack, user="twice")
    rows = [chat_row(f"d{i}", f"twice {i}", latency_ms=300) for i in range(20)]
    before = stats(stack.upstream_url)["duplicate_successes"]
    batch = submit(sdk, rows)
    stack.wait_until(lambda: sdk.batches.retrieve(batch.id).status == "in_progress", 20, "in progress")
    offsets = build_runtime(Settings(redis_url=stack.redis_url or ""), pool_size=2).batches.offsets(batch.id)
    celery = Celery(broker=stack.redis_url, backend=stack.redis_url)
    for index, (offset, length) in enumerate(offsets):
        celery.send_task("batchq.line", args=[batch.id, index, offset, length])
    final = wait(sdk, batch.id, timeout=60)
    assert_exactly_once(sdk, final, [r["custom_id"] for r in rows])
    assert stats(stack.upstream_url)["duplicate_successes"] == before
    celery.close()


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    workdir = tmp_path_factory.mktemp("routed")
    main_port, embed_port = free_port(), free_port()
    second = subprocess.Popen([sys.executable, "-m", "batchq.local.mock_upstream", "--port", str(embed_port)])
    embed_url = f"http://127.0.0.1:{embed_port}"
    wait_for(_http_ok(embed_url + "/_stats"), 20, "second upstream")
    routes = [
        {"name": "slow", "url": f"http://127.0.0.1:{main_port}", "models": ["slowpoke"], "timeout_s": 0.5},
        {"name": "embed", "url": embed_url + "/v1", "endpoints": ["/v1/embeddings"]},
        {"name": "main", "url": f"http://127.0.0.1:{main_port}", "endpoints": ["/v1/chat/completions"]},
    ]
    stack = Stack(workdir, env_overrides=FAST | {"BATCHQ_UPSTREAMS": orjson.dumps(routes).decode()})
    stack.upstream_port = main_port
    try:
        yield stack.start(workers=1, concurrency=8), embed_url
    finally:
        stack.stop()
        second.terminate()
        second.wait(10)


def test_requests_are_routed_by_endpoint_and_model(routed: tuple[Stack, str]) -> None:
    stack, embed_url = routed
    sdk = client(stack, user="router")
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": "hi"}} for i in range(5)
    ]
    uploaded = sdk.files.create(file=("e.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows)), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = wait(sdk, batch.id)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 5
    assert stats(embed_url)["requests"] == 5
    assert stats(stack.upstream_url)["requests"] == 0


def test_a_per_request_timeout_becomes_an_error_line(routed: tuple[Stack, str]) -> None:
    stack, _ = routed
    sdk = client(stack, user="timeouts")
    slow = chat_row("slow", "slow", latency_ms=3000)
    slow["body"]["model"] = "slowpoke"  # type: ignore[index]
    batch = wait(sdk, submit(sdk, [slow, chat_row("quick")]).id, timeout=60)
    output, errors = results(sdk, batch)
    assert [line["custom_id"] for line in output] == ["quick"]
    assert errors[0]["custom_id"] == "slow" and errors[0]["error"]["code"] == "upstream_timeout"


def completed(sdk: OpenAI, batch_id: str) -> int:
    counts = sdk.batches.retrieve(batch_id).request_counts
    return counts.completed if counts else 0


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker with 4 threads and a line queue of 2 granted tasks."""
    stack = Stack(tmp_path_factory.mktemp("narrow"), env_overrides=FAST | {"BATCHQ_QUEUE_DEPTH": "2"})
    try:
        yield stack.start(workers=1, concurrency=4)
    finally:
        stack.stop()


def test_a_small_batch_does_not_wait_behind_a_big_one(narrow: Stack) -> None:
    big_sdk, small_sdk = client(narrow, user="big-tenant"), client(narrow, user="small-tenant")
    big_rows = [chat_row(f"big{i}", f"big {i}", latency_ms=100) for i in range(240)]  # ~6 s on 4 threads
    big = submit(big_sdk, big_rows)
    narrow.wait_until(lambda: completed(big_sdk, big.id) >= 8, 30, "the big batch to run")
    small = wait(small_sdk, submit(small_sdk, [chat_row(f"small{i}", latency_ms=100) for i in range(3)]).id, 30)
    assert small.status == "completed"
    progress = big_sdk.batches.retrieve(big.id)
    assert progress.status == "in_progress", "the small batch waited until the big one was done"
    assert completed(big_sdk, big.id) < 200
    final = wait(big_sdk, big.id, timeout=120)
    assert_exactly_once(big_sdk, final, [r["custom_id"] for r in big_rows])
