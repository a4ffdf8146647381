"""Integration tests for the mock OpenAI-compatible upstream."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from batchq.local.mock_upstream import MockConfig, build_app

pytestmark = pytest.mark.integration

Scenario = Callable[[TestClient[Any, Any]], Awaitable[None]]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(scenario: Scenario, config: MockConfig | None = None) -> None:
    async def main() -> None:
        app = build_app(config or MockConfig(seed=1))
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await scenario(client)

    asyncio.run(main())


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": [{"role": "user", "content": content}], **extra}


async def _stats(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/_stats")
    data: dict[str, Any] = await resp.json()
    return data


def test_chat_completion_shape_and_usage() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/chat/completions", json=_chat("hello big world"))
        assert resp.status == 200
        assert resp.headers["x-request-id"].startswith("req_")
        data = await resp.json()
        assert data["id"].startswith("chatcmpl-")
        assert data["object"] == "chat.completion"
        assert data["model"] == "m1"
        choice = data["choices"][0]
        assert choice["message"] == {
            "role": "assistant",
            "content": "echo: hello big world",
            "refusal": None,
        }
        assert choice["finish_reason"] == "stop"
        usage = data["usage"]
        assert usage["prompt_tokens"] == 3
        assert usage["completion_tokens"] == 4
        assert usage["total_tokens"] == 7

    _run(scenario)


def test_unprefixed_paths_completions_and_responses() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/completions", json={"model": "m", "prompt": "a b"})
        data = await resp.json()
        assert data["object"] == "text_completion"
        assert data["choices"][0]["text"] == "echo: a b"
        assert data["usage"]["total_tokens"] == 5
        resp = await client.post("/v1/responses", json={"model": "m", "input": "hi"})
        data = await resp.json()
        assert data["object"] == "response"
        assert data["output"][0]["content"][0]["text"] == "echo: hi"
        assert data["usage"] == {
            "input_tokens": 1,
            "output_tokens": 2,
            "total_tokens": 3,
        }

    _run(scenario)


def test_embeddings_single_and_list() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        one = await (await client.post("/v1/embeddings", json={"input": "x y"})).json()
        assert one["object"] == "list"
        assert len(one["data"]) == 1
        assert len(one["data"][0]["embedding"]) == 8
        assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
        body = {"model": "e", "input": ["a", "b", "x y"]}
        many = await (await client.post("/embeddings", json=body)).json()
        assert [d["index"] for d in many["data"]] == [0, 1, 2]
        assert many["data"][2]["embedding"] == one["data"][0]["embedding"]

    _run(scenario)


def test_unknown_path_and_invalid_json_envelopes() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/v1/nope", json={})
        assert resp.status == 404
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        resp = await client.post("/v1/chat/completions", data=b"{not json")
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"

    _run(scenario)


def test_mock_status_directive() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        body = _chat("x", mock={"status": 400})
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=body)
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        stats = await _stats(client)
        assert stats["by_status"] == {"400": 2}
        assert stats["success_bodies"] == 0

    _run(scenario)


def test_fail_times_then_success() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        directive = {"status": 429, "fail_times": 2, "retry_after": 0.25}
        body = _chat("retry me", mock=directive)
        statuses = []
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=body)
            statuses.append(resp.status)
            if resp.status == 429:
                assert resp.headers["Retry-After"] == "0.25"
        assert statuses == [429, 429, 200]
        other = await client.post("/v1/chat/completions", json=_chat("other", mock=directive))
        assert other.status == 429  # separate body, separate counter
        await client.post("/_reset")
        again = await client.post("/v1/chat/completions", json=body)
        assert again.status == 429  # reset forgets fail_times memory

    _run(scenario)


async def _wait_in_flight(client: TestClient[Any, Any], expected: int) -> None:
    for _ in range(100):
        if (await _stats(client))["in_flight"] == expected:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"in_flight never reached {expected}")


def test_peak_in_flight_counts_latency_sleep() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        bodies = [_chat(f"slow {i}") for i in range(5)]
        posts = [client.post("/v1/chat/completions", json=b) for b in bodies]
        tasks = [asyncio.ensure_future(p) for p in posts]
        await _wait_in_flight(client, 5)
        responses = await asyncio.gather(*tasks)
        assert [r.status for r in responses] == [200] * 5
        stats = await _stats(client)
        assert stats["peak_in_flight"] == 5
        assert stats["in_flight"] == 0
        assert stats["requests"] == 5

    _run(scenario, MockConfig(latency_ms=400))


def test_duplicate_successes_and_reset() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for content in ("a", "b", "a", "a"):
            await client.post("/v1/chat/completions", json=_chat(content))
        stats = await _stats(client)
        assert stats["success_bodies"] == 2
        assert stats["duplicate_successes"] == 2
        assert stats["by_status"] == {"200": 4}
        await client.post("/_reset")
        stats = await _stats(client)
        assert stats["requests"] == 0
        assert stats["success_bodies"] == 0
        assert stats["duplicate_successes"] == 0
        assert stats["by_status"] == {}

    _run(scenario)


def test_max_concurrency_rejects_excess() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        posts = [client.post("/v1/chat/completions", json=_chat(str(i))) for i in range(5)]
        responses = await asyncio.gather(*posts)
        statuses = sorted(r.status for r in responses)
        assert statuses == [200, 200, 429, 429, 429]
        rejected = [r for r in responses if r.status == 429]
        assert all(r.headers["Retry-After"] == "1" for r in rejected)
        stats = await _stats(client)
        assert stats["peak_in_flight"] == 2

    _run(scenario, MockConfig(latency_ms=200, max_concurrency=2))


def test_serve_slots_queue_the_excess_like_vllm_without_a_429() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        started = time.monotonic()
        posts = [client.post("/v1/chat/completions", json=_chat(str(i))) for i in range(6)]
        responses = await asyncio.gather(*posts)
        assert sorted(r.status for r in responses) == [200] * 6
        assert time.monotonic() - started >= 0.6  # three rounds of two, 200 ms each: the queue shows as latency

    _run(scenario, MockConfig(latency_ms=200, serve_slots=2))


def test_close_directive_drops_connection() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        with pytest.raises(aiohttp.ClientError):
            await client.post("/v1/chat/completions", json=_chat("x", mock={"close": True}))
        resp = await client.post("/v1/chat/completions", json=_chat("fine"))
        assert resp.status == 200
        stats = await _stats(client)
        assert stats["closed"] == 1
        assert stats["in_flight"] == 0

    _run(scenario)


def test_injected_failure_rates() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        for i in range(40):
            await client.post("/v1/embeddings", json={"input": str(i)})
        by_status = (await _stats(client))["by_status"]
        assert set(by_status) == {"200", "429", "500"}
        assert sum(by_status.values()) == 40

    _run(scenario, MockConfig(fail_429=0.3, fail_500=0.3, seed=7))


def test_run_prints_bound_address_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "batchq.local.mock_upstream", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("mock upstream listening on http://127.0.0.1:")
        assert int(line.rsplit(":", 1)[1]) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


ENGINE = MockConfig(engine_k=32, engine_steps=50, engine_step_ms=4.0, engine_max=256)


def test_the_engine_model_serves_a_batch_slower_per_request_yet_faster_in_all() -> None:
    """A request of 50 steps of at least 4 ms; 32 at once: each step at least twice as long,
    but all 32 done long before 32 requests one after another."""

    async def scenario(client: TestClient[Any, Any]) -> None:
        began = time.perf_counter()
        assert (await client.post("/v1/chat/completions", json=_chat("alone"))).status == 200
        alone = time.perf_counter() - began
        assert alone >= 50 * 0.004 * (1 + 1 / 32)
        began = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=_chat(f"r{i}")) for i in range(32)))
        together = time.perf_counter() - began
        assert all(a.status == 200 for a in answers)
        assert together >= 50 * 0.004 * 2  # the batch of 32: every step twice as long
        assert together < 32 * alone / 4  # yet 32 served in far less than 32 one after another
        assert (await _stats(client))["engine_peak_batch"] == 32

    _run(scenario, ENGINE)


def test_the_engine_serves_at_most_engine_max_and_queues_the_rest() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answers = await asyncio.gather(*(client.post("/v1/chat/completions", json=_chat(f"r{i}")) for i in range(10)))
        assert [a.status for a in answers] == [200] * 10
        stats = await _stats(client)
        assert stats["engine_peak_batch"] == 4 and stats["peak_in_flight"] == 10

    _run(scenario, MockConfig(engine_k=8, engine_steps=5, engine_step_ms=1.0, engine_max=4))


def test_the_gateway_answers_429_without_retry_after_over_its_window_until_it_turns() -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        statuses, headers = [], []
        for i in range(5):
            answer = await client.post("/v1/chat/completions", json=_chat(f"r{i}"))
            statuses.append(answer.status)
            headers.append(answer.headers)
        assert statuses == [200, 200, 200, 429, 429]
        assert all("Retry-After" not in h for h in headers)
        error = await (await client.post("/v1/chat/completions", json=_chat("over"))).json()
        assert error["error"]["code"] == "rate_limit_exceeded"
        await asyncio.sleep(0.6)  # the window (0.5 s from the first request) has turned
        assert (await client.post("/v1/chat/completions", json=_chat("next"))).status == 200

    _run(scenario, MockConfig(window_limit=3, window_s=0.5))
