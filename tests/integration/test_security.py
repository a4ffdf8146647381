"""Managed keys, per-key limits and hostile input, against real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx2
import openai
import pytest

from batchq.config import Settings
from batchq.local.stack import Stack
from batchq.runtime import build_runtime
from tests.integration.conftest import start_stack
from tests.integration.helpers import chat_row, client, jsonl, submit, wait

pytestmark = pytest.mark.integration

LIMITS = {
    "BATCHQ_API_RPM_PER_KEY": "300",
    "BATCHQ_MAX_ACTIVE_BATCHES_PER_KEY": "2",
    "BATCHQ_MAX_ENQUEUED_LINES_PER_KEY": "50",
    "BATCHQ_MAX_FILE_BYTES": "16384",
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("guarded"), LIMITS, workers=1, concurrency=8)
    yield running
    running.stop()


def new_key(stack: Stack, name: str) -> str:
    """A managed key, made with the same command an operator runs."""
    env = stack.env()
    done = subprocess.run([sys.executable, "-m", "batchq", "keys", "create", "--name", name], env=env, **CAPTURE)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CAPTURE: dict[str, object] = {"capture_output": True, "text": True, "timeout": 60}


def test_a_managed_key_works_until_revoked(guarded: Stack) -> None:
    secret = new_key(guarded, "team-a")
    assert secret.startswith("sk-") and len(secret) >= 40
    sdk = client(guarded, key=secret)
    assert sdk.batches.list().data == []
    rt = build_runtime(Settings(redis_url=guarded.redis_url or ""), pool_size=2)
    (record,) = [k for k in rt.apikeys.list() if k.name == "team-a"]
    rt.redis.close()
    assert secret not in str(guarded_redis_dump(guarded))  # only the digest is stored
    done = subprocess.run([sys.executable, "-m", "batchq", "keys", "revoke", record.id], env=guarded.env(), **CAPTURE)
    assert done.returncode == 0
    with pytest.raises(openai.AuthenticationError):
        sdk.batches.list()


def guarded_redis_dump(stack: Stack) -> list[bytes]:
    import redis

    with redis.Redis.from_url(stack.redis_url or "") as r:
        return [r.dump(k) or b"" for k in r.keys("batchq:apikey*")]


def test_requests_per_minute_are_limited_with_retry_after(guarded: Stack) -> None:
    headers = {"Authorization": f"Bearer {new_key(guarded, 'chatty')}"}
    with httpx2.Client(base_url=guarded.api_url, headers=headers) as http:
        statuses = [http.get("/v1/batches") for _ in range(301)]
        if statuses[-1].status_code == 200:  # the run crossed a minute boundary: one more window
            statuses += [http.get("/v1/batches") for _ in range(301)]
    first_refusal = next(i for i, r in enumerate(statuses) if r.status_code != 200)
    assert first_refusal >= 300
    limited = statuses[first_refusal]
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_batches_in_flight_and_enqueued_lines_are_limited(guarded: Stack) -> None:
    sdk = client(guarded, key=new_key(guarded, "busy"))
    slow = [chat_row(f"s{i}", latency_ms=4000) for i in range(2)]
    first, second = submit(sdk, slow), submit(sdk, slow)
    with pytest.raises(openai.RateLimitError) as third:
        submit(sdk, slow)
    assert third.value.body["code"] == "too_many_batches"  # type: ignore[index]
    assert third.value.response.headers["retry-after"]
    for batch in (first, second):
        wait(sdk, batch.id, timeout=60)
    too_many_lines = [chat_row(f"l{i}") for i in range(51)]
    with pytest.raises(openai.RateLimitError) as lines:
        submit(sdk, too_many_lines)
    assert lines.value.body["code"] == "too_many_enqueued_requests"  # type: ignore[index]
    assert wait(sdk, submit(sdk, too_many_lines[:40]).id).status == "completed"  # room again


def test_an_upload_over_the_cap_is_refused_while_streaming(guarded: Stack) -> None:
    sdk = client(guarded, user="big")
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.files.create(file=("big.jsonl", b"x" * 40_000), purpose="batch")
    assert refused.value.status_code == 413
    assert refused.value.body["param"] == "file"  # type: ignore[index]


def test_binary_and_non_utf8_content_fails_validation_with_lines(guarded: Stack) -> None:
    sdk = client(guarded, user="binary")
    data = jsonl([chat_row("a")]) + b"\xff\xfe\x00garbage\n" + jsonl([chat_row("b")])
    batch = wait(sdk, submit(sdk, data).id)
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", 2)]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"[" * 5000 + b"]" * 5000, 400, None),
        (b'{"input_file_id": "' + b"x" * (2 << 20) + b'"}', 413, None),
        (b'{"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": [1]}', 400, "metadata"),
        (b'{"input_file_id": 5, "endpoint": "/v1/chat/completions"}', 400, "input_file_id"),
    ],
)
def test_hostile_json_bodies_get_a_4xx_naming_the_field(guarded: Stack, body: bytes, status: int, param: str) -> None:
    headers = {"Authorization": "Bearer sk-test-key", "content-type": "application/json", "X-On-Behalf-Of": "h"}
    response = httpx2.post(guarded.api_url + "/v1/batches", headers=headers, content=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_an_absolute_url_in_a_line_is_rejected_so_workers_never_call_it(guarded: Stack) -> None:
    sdk = client(guarded, user="ssrf")
    row = chat_row("evil")
    row["url"] = "http://169.254.169.254/v1/chat/completions"
    batch = wait(sdk, submit(sdk, [row]).id)
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert batch.errors.data[0].code == "invalid_url"


def test_openapi_document_describes_the_error_envelope(guarded: Stack) -> None:
    spec = httpx2.get(guarded.api_url + "/openapi.json").json()
    assert "ErrorEnvelope" in spec["components"]["schemas"]
    create = spec["paths"]["/v1/batches"]["post"]
    assert {"400", "401", "404", "429"} <= set(create["responses"])
    assert "multipart/form-data" in spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
