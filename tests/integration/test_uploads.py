"""The Uploads API against a real API process, a real Redis and real workers, driven by the openai SDK.

A second API process on the same Redis and data directory runs with a short upload lifetime and a
small part cap, for the expiry and the part-too-large cases.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI
from openai.types import Upload
from openai.types.uploads import UploadPart

from batchq.local.stack import Stack
from batchq.storage import keys
from batchq.storage.redis_client import connect
from tests.integration.conftest import FAST
from tests.integration.helpers import CHAT, assert_exactly_once, chat_row, client, jsonl, wait

pytestmark = pytest.mark.integration

SMALL_PART = 4096
MIME = "application/jsonl"


@pytest.fixture(scope="module")
def short(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API process beside the stack's: uploads expire after 2 s, parts hold at most 4 KiB."""
    env = FAST | {
        "BATCHQ_DATA_DIR": str(stack.workdir / "data"),
        "BATCHQ_UPLOAD_TTL_S": "2",
        "BATCHQ_MAX_PART_BYTES": str(SMALL_PART),
    }
    api = Stack(tmp_path_factory.mktemp("short-api"), redis_url=stack.redis_url, env_overrides=env)
    api.start_api()
    yield api
    api.stop()


@pytest.fixture
def sdk(stack: Stack) -> Iterator[OpenAI]:
    with client(stack, user=f"uploads-{secrets.token_hex(6)}") as running:
        yield running


def rows(n: int) -> bytes:
    return jsonl([chat_row(f"r{i}", content="x" * (i % 50)) for i in range(n)])


def fields_match(model: type[openai.BaseModel], answer: dict[str, Any]) -> None:
    """An answer has exactly the fields of the SDK's model (OpenAI's schema) and validates against it."""
    assert set(answer) == set(model.model_fields), sorted(answer)
    model.model_validate(answer)


def test_upload_file_chunked_then_a_batch_from_the_file(sdk: OpenAI, tmp_path: Path) -> None:
    data = rows(300)
    source = tmp_path / "big.jsonl"
    source.write_bytes(data)
    upload = sdk.uploads.upload_file_chunked(
        file=source, mime_type=MIME, purpose="batch", part_size=8192, md5=hashlib.md5(data).hexdigest()
    )
    assert upload.status == "completed" and upload.file is not None, upload
    assert (upload.bytes, upload.filename, upload.purpose) == (len(data), "big.jsonl", "batch")
    assert upload.file.bytes == len(data) and upload.file.purpose == "batch"
    assert sdk.files.content(upload.file.id).content == data
    batch = sdk.batches.create(input_file_id=upload.file.id, endpoint=CHAT, completion_window="24h")
    batch = wait(sdk, batch.id)
    assert batch.status == "completed", batch
    assert_exactly_once(sdk, batch, [f"r{i}" for i in range(300)])


def test_answers_have_openais_shapes(sdk: OpenAI) -> None:
    data = rows(3)
    created = sdk.uploads.with_raw_response.create(
        bytes=len(data), filename="in.jsonl", mime_type=MIME, purpose="batch"
    )
    upload = created.http_response.json()
    fields_match(Upload, upload)
    assert upload["status"] == "pending" and upload["file"] is None
    assert upload["id"].startswith("upload_") and upload["expires_at"] - upload["created_at"] == 3600
    part = sdk.uploads.parts.with_raw_response.create(upload_id=upload["id"], data=data).http_response.json()
    fields_match(UploadPart, part)
    assert part["id"].startswith("part_") and part["upload_id"] == upload["id"] and part["object"] == "upload.part"
    done = sdk.uploads.with_raw_response.complete(upload_id=upload["id"], part_ids=[part["id"]]).http_response.json()
    fields_match(Upload, done)
    assert done["status"] == "completed" and done["file"]["object"] == "file"


def test_parts_join_in_the_order_given(sdk: OpenAI) -> None:
    first, second = rows(2), jsonl([chat_row("z")])
    upload = sdk.uploads.create(bytes=len(first + second), filename="o.jsonl", mime_type=MIME, purpose="batch")
    late = sdk.uploads.parts.create(upload_id=upload.id, data=second)
    early = sdk.uploads.parts.create(upload_id=upload.id, data=first)
    done = sdk.uploads.complete(upload_id=upload.id, part_ids=[early.id, late.id])
    assert done.file is not None and sdk.files.content(done.file.id).content == first + second


def expect_400(call: Any, code: str, param: str | None = None) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert caught.value.code == code, caught.value.body
    if param is not None:
        assert caught.value.param == param


def test_md5_mismatch_then_the_right_md5(sdk: OpenAI) -> None:
    data = rows(4)
    upload = sdk.uploads.create(bytes=len(data), filename="m.jsonl", mime_type=MIME, purpose="batch")
    part = sdk.uploads.parts.create(upload_id=upload.id, data=data)
    expect_400(
        lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id], md5="0" * 32), "md5_mismatch", "md5"
    )
    done = sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id], md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed"  # a refused complete leaves the upload pending


def test_parts_must_make_the_declared_size(sdk: OpenAI) -> None:
    data = rows(4)
    upload = sdk.uploads.create(bytes=len(data) + 1, filename="s.jsonl", mime_type=MIME, purpose="batch")
    part = sdk.uploads.parts.create(upload_id=upload.id, data=data)
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id]), "upload_size_mismatch")
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id, part.id]), "invalid_request")
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=["part_" + "0" * 32]), "invalid_request")


def test_the_joined_file_meets_every_files_check(sdk: OpenAI) -> None:
    data = b"custom_id,prompt\na,hello\n"
    upload = sdk.uploads.create(bytes=len(data), filename="x.csv", mime_type="text/csv", purpose="batch")
    part = sdk.uploads.parts.create(upload_id=upload.id, data=data)
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id]), "invalid_file_format", "file")
    expect_400(
        lambda: sdk.uploads.create(bytes=10, filename="a", mime_type=MIME, purpose="fine-tune"), "invalid_request"
    )
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.uploads.create(bytes=300 * 1024 * 1024, filename="huge.jsonl", mime_type=MIME, purpose="batch")
    assert caught.value.status_code == 413


def test_cancel(stack: Stack, sdk: OpenAI) -> None:
    upload = sdk.uploads.create(bytes=100, filename="c.jsonl", mime_type=MIME, purpose="batch")
    part = sdk.uploads.parts.create(upload_id=upload.id, data=b"x" * 50)
    part_file = stack.workdir / "data" / "uploads" / upload.id / part.id
    assert part_file.exists()
    cancelled = sdk.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    assert not part_file.parent.exists()
    assert sdk.uploads.cancel(upload.id).status == "cancelled"
    expect_400(lambda: sdk.uploads.parts.create(upload_id=upload.id, data=b"x"), "invalid_upload_state")
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id]), "invalid_upload_state")


def test_uploads_are_scoped_like_files(stack: Stack, sdk: OpenAI) -> None:
    upload = sdk.uploads.create(bytes=10, filename="p.jsonl", mime_type=MIME, purpose="batch")
    with client(stack, user="someone-else") as other:
        for call in (
            lambda: other.uploads.parts.create(upload_id=upload.id, data=b"x"),
            lambda: other.uploads.complete(upload_id=upload.id, part_ids=[]),
            lambda: other.uploads.cancel(upload.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
    with pytest.raises(openai.NotFoundError):
        sdk.uploads.cancel("upload_" + "0" * 32)


def test_a_part_too_large_is_413(stack: Stack, short: Stack, sdk: OpenAI) -> None:
    upload = sdk.uploads.create(bytes=SMALL_PART * 4, filename="b.jsonl", mime_type=MIME, purpose="batch")
    headers = {"Authorization": f"Bearer {stack.api_key}", "X-On-Behalf-Of": str(sdk.default_headers["X-On-Behalf-Of"])}
    url = f"{short.api_url}/v1/uploads/{upload.id}/parts"
    too_big = httpx2.post(url, headers=headers, files={"data": ("blob", b"x" * (SMALL_PART + 1))}, timeout=30)
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"]["param"] == "data"
    fits = httpx2.post(url, headers=headers, files={"data": ("blob", b"x" * SMALL_PART)}, timeout=30)
    assert fits.status_code == 200, fits.text


def test_an_upload_expires_and_its_parts_go(stack: Stack, short: Stack) -> None:
    user = f"expiry-{secrets.token_hex(4)}"
    with client(short, user=user) as quick, client(stack, user=user) as sdk:
        upload = quick.uploads.create(bytes=100, filename="e.jsonl", mime_type=MIME, purpose="batch")
        assert upload.expires_at - upload.created_at == 2
        part = sdk.uploads.parts.create(upload_id=upload.id, data=b"x" * 40)
        part_dir = stack.workdir / "data" / "uploads" / upload.id
        assert (part_dir / part.id).exists()
        redis = connect(stack.redis_url or "")
        stack.wait_until(lambda: redis.hget(keys.upload(upload.id), "status") == b"expired", 15, "the sweep")
        stack.wait_until(lambda: not part_dir.exists(), 5, "parts removed")
        expect_400(lambda: sdk.uploads.parts.create(upload_id=upload.id, data=b"x"), "invalid_upload_state")
        expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id]), "invalid_upload_state")
        expect_400(lambda: sdk.uploads.cancel(upload.id), "invalid_upload_state")


def test_an_upload_past_its_expiry_takes_no_part(stack: Stack, short: Stack) -> None:
    user = f"lazy-{secrets.token_hex(4)}"
    with client(short, user=user) as quick:
        upload = quick.uploads.create(bytes=100, filename="l.jsonl", mime_type=MIME, purpose="batch")
        time.sleep(max(0.0, upload.expires_at - time.time()) + 0.1)
        with pytest.raises(openai.BadRequestError) as caught:
            quick.uploads.parts.create(upload_id=upload.id, data=b"x")
        assert "expired" in caught.value.message


def test_idempotent_upload_operations(sdk: OpenAI) -> None:
    data = rows(2)
    key = {"Idempotency-Key": secrets.token_hex(8)}
    create = {"bytes": len(data), "filename": "i.jsonl", "mime_type": MIME, "purpose": "batch"}
    upload = sdk.uploads.create(**create, extra_headers=key)
    assert sdk.uploads.create(**create, extra_headers=key).id == upload.id
    part_key = {"Idempotency-Key": secrets.token_hex(8)}
    part = sdk.uploads.parts.create(upload_id=upload.id, data=data, extra_headers=part_key)
    assert sdk.uploads.parts.create(upload_id=upload.id, data=data, extra_headers=part_key).id == part.id
    with pytest.raises(openai.ConflictError):
        sdk.uploads.parts.create(upload_id=upload.id, data=data + b"\n", extra_headers=part_key)
    done_key = {"Idempotency-Key": secrets.token_hex(8)}
    done = sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id], extra_headers=done_key)
    again = sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id], extra_headers=done_key)
    assert done.file is not None and again.file is not None and again.file.id == done.file.id
    expect_400(lambda: sdk.uploads.complete(upload_id=upload.id, part_ids=[part.id]), "invalid_upload_state")
