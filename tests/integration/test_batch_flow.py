"""The whole path through the official openai SDK: upload, create, run, download."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest
import redis

from batchq.local.stack import Stack
from tests.integration.helpers import (
    CHAT,
    assert_exactly_once,
    chat_row,
    client,
    jsonl,
    lines_of,
    results,
    submit,
    wait,
)  # fmt: skip

pytestmark = pytest.mark.integration


def test_sdk_flow_completes_with_every_line_in_the_output(stack: Stack) -> None:
    sdk = client(stack, user="flow")
    rows = [chat_row(f"r{i}", f"hello {i}") for i in range(30)]
    created = submit(sdk, rows, metadata={"project": "demo"})
    assert created.status == "validating" and created.id.startswith("batch_")
    batch = wait(sdk, created.id)
    assert batch.status == "completed"
    assert batch.output_file_id and batch.error_file_id is None
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "expires_at"):
        assert isinstance(getattr(batch, stamp), int)
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.metadata == {"project": "demo"}
    assert_exactly_once(sdk, batch, [r["custom_id"] for r in rows])
    output, _ = results(sdk, batch)
    first = next(line for line in output if line["custom_id"] == "r3")
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello 3"
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert batch.usage is not None and batch.usage.total_tokens > 0
    assert batch.model == "m"


def test_upstream_errors_go_to_the_error_file_and_transient_ones_are_retried(stack: Stack) -> None:
    sdk = client(stack, user="errors")
    rows = [chat_row(f"ok{i}") for i in range(5)]
    rows += [chat_row(f"bad{i}", f"bad {i}", status=400) for i in range(3)]
    rows += [chat_row(f"flaky{i}", f"flaky {i}", status=500, fail_times=2) for i in range(3)]
    rows += [chat_row("limited", "limited", status=429, fail_times=1, retry_after=0)]
    rows += [chat_row("down", "always down", status=503)]
    batch = wait(sdk, submit(sdk, rows).id)
    assert batch.status == "completed"
    assert_exactly_once(sdk, batch, [r["custom_id"] for r in rows])
    output, errors = results(sdk, batch)
    assert {line["custom_id"] for line in errors} == {"bad0", "bad1", "bad2", "down"}
    bad = next(line for line in errors if line["custom_id"] == "bad0")
    assert bad["response"]["status_code"] == 400 and bad["response"]["body"]["error"]["type"]
    down = next(line for line in errors if line["custom_id"] == "down")
    assert down["response"]["status_code"] == 503
    assert {line["custom_id"] for line in output} >= {"flaky0", "flaky1", "flaky2", "limited"}


def test_a_dropped_connection_becomes_an_error_line(stack: Stack) -> None:
    sdk = client(stack, user="dropped")
    rows = [chat_row("closed", close=True), chat_row("fine")]
    batch = wait(sdk, submit(sdk, rows).id)
    _, errors = results(sdk, batch)
    assert errors == [errors[0]] and errors[0]["custom_id"] == "closed"
    assert errors[0]["response"] is None and errors[0]["error"]["code"] == "upstream_unreachable"


def test_validation_failure_reports_codes_and_line_numbers(stack: Stack) -> None:
    sdk = client(stack, user="invalid")
    good = chat_row("a")
    data = b"\n".join([
        jsonl([good]).strip(),
        b"{not json",
        b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}',
        jsonl([good]).strip(),
        b'{"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {}}',
        b'{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"stream": true}}',
    ]) + b"\n\n"  # fmt: skip
    batch = wait(sdk, submit(sdk, data).id)
    assert batch.status == "failed" and isinstance(batch.failed_at, int)
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.code, e.line, e.param) for e in batch.errors.data]
    assert found == [
        ("invalid_json_line", 2, None),
        ("missing_required_parameter", 3, "body"),
        ("duplicate_custom_id", 4, "custom_id"),
        ("invalid_url", 5, "url"),
        ("streaming_unsupported", 6, "body.stream"),
    ]
    assert batch.output_file_id is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\n\n", "empty_file"),
        (b"custom_id,method,url\nr1,POST,/v1/chat/completions\n", "invalid_file_format"),
        (b'[{"custom_id": "r1"}]\n', "invalid_file_format"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "invalid_file_format"),
        (b"{}\n" * 50_001 + b"\n\n", "too_many_requests"),
    ],
    ids=["empty", "csv", "json-array", "zip", "too-many-lines"],
)
def test_an_input_that_can_never_run_is_refused_at_upload(stack: Stack, data: bytes, code: str) -> None:
    sdk = client(stack, user="refused-upload")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.files.create(file=("input.jsonl", data), purpose="batch")
    error = refused.value.body
    assert isinstance(error, dict) and (error["code"], error["param"]) == (code, "file")
    assert sdk.files.list().data == []  # nothing stored


def test_trailing_blank_lines_do_not_count_against_the_line_limit(stack: Stack) -> None:
    sdk = client(stack, user="blank-tail")
    uploaded = sdk.files.create(file=("input.jsonl", jsonl([chat_row("t")] * 1) + b"\n \n\r\n" * 10), purpose="batch")
    batch = wait(sdk, sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.total == 1


def test_list_is_newest_first_with_cursor(stack: Stack) -> None:
    sdk = client(stack, user="lister")
    ids = [submit(sdk, [chat_row("x")]).id for _ in range(3)]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    rest = sdk.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data] == [ids[0]] and not rest.has_more
    assert [b.id for b in sdk.batches.list()] == ids[::-1]  # the SDK's auto-pagination


def test_files_can_be_listed_fetched_and_deleted(stack: Stack) -> None:
    sdk = client(stack, user="files")
    uploaded = sdk.files.create(file=("mine.jsonl", jsonl([chat_row("a")])), purpose="batch")
    assert uploaded.filename == "mine.jsonl" and uploaded.purpose == "batch" and uploaded.bytes > 0
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
    assert [f.id for f in sdk.files.list()] == [uploaded.id]
    assert sdk.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)


def test_auth_is_required_and_checked(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(stack, key="sk-wrong").batches.list()
    response = httpx2.get(stack.api_url + "/v1/batches")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_on_behalf_of_scopes_everything(stack: Stack) -> None:
    alice, bob, account = client(stack, user="alice"), client(stack, user="bob"), client(stack)
    batch = submit(alice, [chat_row("a")])
    for other in (bob, account):
        with pytest.raises(openai.NotFoundError):
            other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(batch.input_file_id)
        with pytest.raises(openai.NotFoundError):
            other.batches.cancel(batch.id)
        assert batch.id not in [b.id for b in other.batches.list()]
    with pytest.raises(openai.BadRequestError):
        client(stack, user="*").batches.list()


def test_gateway_paths_serve_the_same_api(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}", "X-On-Behalf-Of": "gateway"}
    base = stack.api_url + "/api/v1/llm"
    files = {"file": ("in.jsonl", jsonl([chat_row("g")]))}
    uploaded = httpx2.post(f"{base}/files", headers=headers, data={"purpose": "batch"}, files=files).json()
    body = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = httpx2.post(f"{base}/batches", headers=headers, json=body).json()
    assert created["status"] == "validating"
    listed = httpx2.get(f"{base}/batches", headers=headers, params={"limit": 1}).json()
    assert listed["data"][0]["id"] == created["id"] and listed["object"] == "list"
    batch = wait(client(stack, user="gateway"), created["id"])
    content = httpx2.get(f"{base}/files/{batch.output_file_id}/content", headers=headers)
    assert content.status_code == 200 and b'"custom_id":"g"' in content.content


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("GET", "/v1/batches/batch_00000000000000000000000000000000", None, 404, "batch_id"),
        ("GET", "/v1/batches/nonsense", None, 404, "batch_id"),
        ("GET", "/v1/files/file-nope/content", None, 404, "file_id"),
        ("GET", "/v1/batches?limit=0", None, 400, "limit"),
        ("GET", "/v1/batches?limit=101", None, 400, "limit"),
        ("POST", "/v1/batches", {"endpoint": "/v1/chat/completions"}, 400, "input_file_id"),
        ("POST", "/v1/batches", {"input_file_id": "file-x", "endpoint": "/v1/nope"}, 400, "endpoint"),
        (
            "POST",
            "/v1/batches",
            {"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "1y"},
            400,
            "completion_window",
        ),
        (
            "POST",
            "/v1/batches",
            {"input_file_id": "f", "endpoint": "/v1/chat/completions", "metadata": {"k": "v" * 513}},
            400,
            "metadata",
        ),
        ("POST", "/v1/batches", {"input_file_id": "file-0", "endpoint": CHAT}, 404, "file_id"),
    ],
)
def test_bad_requests_get_openai_errors(
    stack: Stack, method: str, path: str, body: object, status: int, param: str
) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    response = httpx2.request(method, stack.api_url + path, headers=headers, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_malformed_json_body_is_a_400(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key}", "content-type": "application/json"}
    response = httpx2.post(stack.api_url + "/v1/batches", headers=headers, content=b"{nope")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_cancelling_a_finished_batch_is_a_conflict(stack: Stack) -> None:
    sdk = client(stack, user="late-cancel")
    batch = wait(sdk, submit(sdk, [chat_row("a")]).id)
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)


def test_output_file_content_is_downloadable_by_its_owner_only(stack: Stack) -> None:
    sdk = client(stack, user="owner")
    batch = wait(sdk, submit(sdk, [chat_row("a")]).id)
    assert len(lines_of(sdk, batch.output_file_id)) == 1
    with pytest.raises(openai.NotFoundError):
        client(stack, user="thief").files.content(batch.output_file_id or "")


def test_an_input_file_cannot_be_deleted_while_its_batch_runs(stack: Stack) -> None:
    sdk = client(stack, user="deleter")
    batch = submit(sdk, [chat_row("slow", latency_ms=1500)])
    with pytest.raises(openai.ConflictError):
        sdk.files.delete(batch.input_file_id)
    wait(sdk, batch.id)
    assert sdk.files.delete(batch.input_file_id).deleted


def test_file_and_output_lifetimes_follow_the_expiry_policies(stack: Stack) -> None:
    sdk = client(stack, user="lifetimes")
    uploaded = sdk.files.create(
        file=("input.jsonl", jsonl([chat_row("l0")])), purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )  # fmt: skip
    assert uploaded.expires_at == uploaded.created_at + 7200
    created = sdk.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )  # fmt: skip
    output = sdk.files.retrieve(wait(sdk, created.id).output_file_id or "")
    assert output.expires_at == output.created_at + 3600
    default = sdk.files.create(file=("input.jsonl", jsonl([chat_row("d0")])), purpose="batch")
    assert default.expires_at == default.created_at + 30 * 86400  # BATCHQ_FILE_TTL_DAYS


@pytest.mark.parametrize("seconds", [60, 40 * 86400])
def test_expiry_policies_outside_an_hour_to_thirty_days_are_refused(stack: Stack, seconds: int) -> None:
    sdk = client(stack, user="bad-lifetimes")
    with pytest.raises(openai.BadRequestError) as upload:
        sdk.files.create(
            file=("input.jsonl", jsonl([chat_row("b0")])), purpose="batch",
            expires_after={"anchor": "created_at", "seconds": seconds},
        )  # fmt: skip
    assert isinstance(upload.value.body, dict) and upload.value.body["param"] == "expires_after[seconds]"
    uploaded = sdk.files.create(file=("input.jsonl", jsonl([chat_row("b1")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as create:
        sdk.batches.create(
            input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": seconds},
        )  # fmt: skip
    assert isinstance(create.value.body, dict) and create.value.body["param"] == "output_expires_after[seconds]"


def test_an_expired_input_file_cannot_start_a_batch(stack: Stack) -> None:
    sdk = client(stack, user="stale-input")
    uploaded = sdk.files.create(file=("input.jsonl", jsonl([chat_row("s0")])), purpose="batch")
    store = redis.Redis.from_url(stack.redis_url or "")
    store.hset(f"batchq:file:{uploaded.id}", "expires_at", int(time.time()) - 1)  # not swept yet
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "input_file_id"
    store.close()
