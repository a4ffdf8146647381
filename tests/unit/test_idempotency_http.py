"""Unit tests for ``batchq.api.idempotency.once`` over an in-memory store double: what is kept,
what frees the key, and how a duplicate waits for a running request."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from batchq.api.idempotency import REPLAYED, once
from batchq.domain.idempotency import Answer, Seen, judge
from batchq.domain.models import Owner
from batchq.errors import InProgress, InvalidRequest, RateLimited
from batchq.storage.idempotency import Claim

OWNER = Owner("key_a", "u1")


class Made(BaseModel):
    id: str


@dataclass
class MemoryStore:
    """The IdempotencyStore's interface, in a dict: scope -> (digest, token, answer)."""

    records: dict[str, tuple[str, str, Answer | None]] = field(default_factory=dict)
    released: int = 0

    def begin(self, scope: str, digest: str) -> Claim:
        if scope not in self.records:
            token = secrets.token_hex(4)
            self.records[scope] = (digest, token, None)
            return Claim(Seen.NEW, token)
        stored, _, answer = self.records[scope]
        return Claim(judge(stored, answer, digest), answer=answer)

    def finish(self, scope: str, token: str, digest: str, answer: Answer) -> bool:
        if self.records.get(scope, ("", "", None))[1] != token:
            return False
        self.records[scope] = (digest, token, answer)
        return True

    def release(self, scope: str, token: str) -> None:
        if self.records.get(scope, ("", "", None))[1] == token:
            del self.records[scope]
            self.released += 1


@dataclass
class FakeSettings:
    idempotency_wait_s: float = 0.3


@dataclass
class FakeRuntime:
    idempotency: MemoryStore = field(default_factory=MemoryStore)
    settings: FakeSettings = field(default_factory=FakeSettings)


def request(path: str = "/v1/batches") -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})


class Counter:
    def __init__(self, outcome: Any = None) -> None:
        self.calls = 0
        self.outcome = outcome

    async def __call__(self) -> Made:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return Made(id=f"made-{self.calls}")


def call(rt: FakeRuntime, action: Counter, content: bytes = b"c", key: str | None = "k", path: str = "/v1/x") -> Any:
    return asyncio.run(once(request(path), rt, OWNER, key, [content], action))  # type: ignore[arg-type]


def test_a_success_is_replayed_byte_for_byte() -> None:
    rt, action = FakeRuntime(), Counter()
    first, again = call(rt, action), call(rt, action, path="/api/v1/llm/x")
    assert action.calls == 1
    assert (again.status_code, again.body) == (first.status_code, first.body) == (200, b'{"id":"made-1"}')
    assert again.headers[REPLAYED] == "true" and REPLAYED.lower() not in first.headers


def test_without_a_key_nothing_is_kept() -> None:
    rt, action = FakeRuntime(), Counter()
    call(rt, action, key=None)
    call(rt, action, key=None)
    assert action.calls == 2 and rt.idempotency.records == {}


def test_another_request_with_the_key_is_refused() -> None:
    rt, action = FakeRuntime(), Counter()
    call(rt, action)
    with pytest.raises(InvalidRequest) as caught:
        call(rt, action, content=b"other")
    assert (caught.value.status_code, caught.value.code) == (409, "idempotency_key_reused")
    assert action.calls == 1


def test_a_client_error_is_kept() -> None:
    rt, action = FakeRuntime(), Counter(InvalidRequest("nope", param="x"))
    first, again = call(rt, action), call(rt, action)
    assert action.calls == 1 and first.status_code == again.status_code == 400 and first.body == again.body


@pytest.mark.parametrize("failure", [RuntimeError("boom"), RateLimited("slow down", retry_after=5)])
def test_a_server_error_or_429_frees_the_key(failure: Exception) -> None:
    rt, action = FakeRuntime(), Counter(failure)
    with pytest.raises(type(failure)):
        call(rt, action)
    assert rt.idempotency.records == {} and rt.idempotency.released == 1
    action.outcome = None
    assert call(rt, action).status_code == 200 and action.calls == 2  # the retry runs afresh


def test_a_duplicate_waits_for_the_running_request() -> None:
    rt = FakeRuntime()
    started = asyncio.Event()

    async def slow() -> Made:
        started.set()
        await asyncio.sleep(0.1)
        return Made(id="slow")

    async def both() -> tuple[Any, Any]:
        first = asyncio.create_task(once(request(), rt, OWNER, "k", [b"c"], slow))  # type: ignore[arg-type]
        await started.wait()
        second = await once(request(), rt, OWNER, "k", [b"c"], Counter())  # type: ignore[arg-type]
        return await first, second

    first, second = asyncio.run(both())
    assert first.body == second.body == b'{"id":"slow"}' and second.headers[REPLAYED] == "true"


def test_a_duplicate_gives_up_with_409_and_retry_after() -> None:
    rt = FakeRuntime(settings=FakeSettings(idempotency_wait_s=0.05))
    scope_taken = rt.idempotency.begin  # the first request holds the key and never answers

    def held(scope: str, digest: str) -> Claim:
        scope_taken(scope, digest)
        return Claim(Seen.RUNNING)

    rt.idempotency.begin = held  # type: ignore[method-assign]
    with pytest.raises(InProgress) as caught:
        call(rt, Counter())
    assert (caught.value.status_code, caught.value.code, caught.value.retry_after) == (
        409,
        "idempotency_request_in_progress",
        1,
    )


class InThread:
    """An operation that runs in a worker thread, as a create does: a cancelled request cannot stop it."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()

    async def __call__(self) -> Made:
        self.calls += 1
        return await run_in_threadpool(self._create)

    def _create(self) -> Made:
        self.started.set()
        time.sleep(0.1)
        return Made(id=f"made-{self.calls}")


async def cancel_natively(first: Callable[[], Awaitable[Any]], started: threading.Event) -> None:
    """``Task.cancel()``, as uvicorn does when a shutdown's grace runs out."""
    task = asyncio.create_task(first())
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def cancel_by_anyio(first: Callable[[], Awaitable[Any]], started: threading.Event) -> None:
    """A cancelled anyio scope, as Starlette's task groups do."""
    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.to_thread.run_sync(started.wait, 5)
        group.cancel_scope.cancel()


@pytest.mark.parametrize("cancel", [cancel_natively, cancel_by_anyio])
def test_a_cancelled_request_still_keeps_its_answer_for_the_retry(cancel: Any) -> None:
    rt, action = FakeRuntime(), InThread()

    async def first() -> Any:
        return await once(request(), rt, OWNER, "k", [b"c"], action)  # type: ignore[arg-type]

    async def cancelled_then_retried() -> Any:
        await cancel(first, action.started)
        return await first()  # the client's retry, with the same key

    retry = asyncio.run(cancelled_then_retried())
    assert action.calls == 1 and rt.idempotency.released == 0
    assert retry.body == b'{"id":"made-1"}' and retry.headers[REPLAYED] == "true"
