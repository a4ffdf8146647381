"""Idempotency-Key on creates, against a real API process and a real Redis.

Replays (same id, same status, both path prefixes), 409 on a key reused for another request,
4xx answers replayed, keys scoped per tenant and per user, and 100 concurrent identical creates
with one key making one batch.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest

from batchq.local.stack import Stack
from batchq.storage.apikeys import ApiKeyStore
from batchq.storage.redis_client import connect
from tests.integration.helpers import CHAT, chat_row, jsonl

pytestmark = pytest.mark.integration


def headers(key: str, user: str | None, idem: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {key}"}
    if user:
        out["X-On-Behalf-Of"] = user
    if idem:
        out["Idempotency-Key"] = idem
    return out


class Caller:
    """One identity (API key, user) talking to the API with httpx2."""

    def __init__(self, stack: Stack, key: str, user: str | None = None) -> None:
        self.http = httpx2.Client(base_url=stack.api_url, timeout=30.0)
        self.key, self.user = key, user

    def upload(self, data: bytes, idem: str | None = None, name: str = "in.jsonl") -> httpx2.Response:
        return self.http.post(
            "/v1/files", headers=headers(self.key, self.user, idem), files={"file": (name, data)},
            data={"purpose": "batch"},
        )  # fmt: skip

    def create(self, body: dict[str, Any], idem: str | None = None, prefix: str = "/v1") -> httpx2.Response:
        return self.http.post(f"{prefix}/batches", headers=headers(self.key, self.user, idem), json=body)

    def close(self) -> None:
        self.http.close()

    def batches(self) -> list[dict[str, Any]]:
        page = self.http.get("/v1/batches", headers=headers(self.key, self.user), params={"limit": 100})
        data: list[dict[str, Any]] = page.json()["data"]
        return data


@pytest.fixture
def caller(stack: Stack) -> Iterator[Caller]:
    running = Caller(stack, stack.api_key, f"idem-{secrets.token_hex(6)}")
    yield running
    running.close()


def input_file(caller: Caller) -> str:
    response = caller.upload(jsonl([chat_row("a"), chat_row("b")]))
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


def assert_error(response: httpx2.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code, body


def test_batch_create_is_replayed_under_both_prefixes(caller: Caller) -> None:
    body = {"input_file_id": input_file(caller), "endpoint": CHAT, "metadata": {"run": "1"}}
    key = secrets.token_hex(8)
    first = caller.create(body, key)
    again = caller.create(dict(reversed(list(body.items()))), key)  # same content, other key order
    alias = caller.create(body, key, prefix="/api/v1/llm")
    assert first.status_code == again.status_code == alias.status_code == 200, first.text
    assert first.json()["id"] == again.json()["id"] == alias.json()["id"]
    assert again.content == first.content  # the first answer, byte for byte
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    assert [b["id"] for b in caller.batches()] == [first.json()["id"]]


def test_a_key_reused_for_another_request_is_409(caller: Caller) -> None:
    body = {"input_file_id": input_file(caller), "endpoint": CHAT}
    key = secrets.token_hex(8)
    assert caller.create(body, key).status_code == 200
    assert_error(caller.create(body | {"metadata": {"other": "yes"}}, key), 409, "idempotency_key_reused")
    assert len(caller.batches()) == 1


def test_client_errors_are_replayed_too(caller: Caller) -> None:
    key = secrets.token_hex(8)
    body = {"input_file_id": "file-" + "0" * 32, "endpoint": CHAT}
    first, again = caller.create(body, key), caller.create(body, key)
    assert_error(first, 404, "not_found")
    assert again.status_code == 404 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"


def test_without_a_key_every_create_is_new(caller: Caller) -> None:
    body = {"input_file_id": input_file(caller), "endpoint": CHAT}
    assert caller.create(body).json()["id"] != caller.create(body).json()["id"]


@pytest.mark.parametrize("bad", [b"x" * 256, "caf\u00e9".encode()])
def test_a_bad_key_is_400(caller: Caller, bad: bytes) -> None:
    sent: dict[str, str | bytes] = {**headers(caller.key, caller.user), "Idempotency-Key": bad}
    body = {"input_file_id": input_file(caller), "endpoint": CHAT}
    response = caller.http.post("/v1/batches", headers=sent, json=body)
    assert_error(response, 400, "invalid_idempotency_key")
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert caller.batches() == []


def test_file_upload_replays_by_content(caller: Caller) -> None:
    key = secrets.token_hex(8)
    data = jsonl([chat_row("x")])
    first, again = caller.upload(data, key), caller.upload(data, key)
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["id"] == again.json()["id"]
    assert_error(caller.upload(data + jsonl([chat_row("y")]), key), 409, "idempotency_key_reused")
    assert_error(caller.upload(data, key, name="renamed.jsonl"), 409, "idempotency_key_reused")
    bad = caller.upload(b"not json\n", secrets.token_hex(8))
    assert_error(bad, 400, "invalid_file_format")


def test_keys_are_scoped_to_tenant_and_user(stack: Stack) -> None:
    _, other_key = ApiKeyStore(connect(stack.redis_url or "")).create(f"idem-{secrets.token_hex(4)}")
    user = f"idem-{secrets.token_hex(6)}"
    callers = [Caller(stack, stack.api_key, user), Caller(stack, other_key, user), Caller(stack, stack.api_key)]
    key = secrets.token_hex(8)
    ids = []
    for each in callers:
        response = each.create({"input_file_id": input_file(each), "endpoint": CHAT}, key)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
        each.close()
    assert len(set(ids)) == 3  # one key, three callers: three batches, no 409


def test_concurrent_identical_creates_make_one_batch(caller: Caller) -> None:
    body = {"input_file_id": input_file(caller), "endpoint": CHAT}
    key = secrets.token_hex(8)

    def create(_: int) -> httpx2.Response:
        """One client's create, retried as a client should while the first is still in progress."""
        with httpx2.Client(base_url=caller.http.base_url, timeout=60.0) as http:
            for _ in range(10):
                response = http.post("/v1/batches", headers=headers(caller.key, caller.user, key), json=body)
                if response.status_code != 409:
                    return response
                assert response.json()["error"]["code"] == "idempotency_request_in_progress", response.text
                time.sleep(float(response.headers["retry-after"]))
            return response

    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(create, range(100)))
    assert {a.status_code for a in answers} == {200}, {a.status_code: a.text for a in answers}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if "idempotent-replayed" not in a.headers) == 1  # exactly one ran
    assert len(caller.batches()) == 1
