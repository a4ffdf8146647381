"""``/uploads`` (OpenAI's Uploads API): create, add a part (streamed to disk), complete, cancel."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from batchq.api.body import read_json, request_body
from batchq.api.deps import OwnerDep, RuntimeDep
from batchq.api.errors import ERROR_RESPONSES
from batchq.api.idempotency import IdempotencyKeyDep, once
from batchq.api.multipart import receive_upload, sanitize_filename
from batchq.domain.idempotency import form_content, json_content
from batchq.domain.uploads import MAX_PART_IDS, MIME_PATTERN, NewUpload, UploadObject, UploadPartObject
from batchq.domain.windows import MAX_EXPIRY_S, MIN_EXPIRY_S
from batchq.services import uploads

router = APIRouter(prefix="/uploads", tags=["uploads"], responses=ERROR_RESPONSES)
MAX_JSON_BYTES = 1 << 20
PART_FIELD = "data"


class FileExpiry(BaseModel):
    """The lifetime of the File a completed upload becomes (default: ``BATCHQ_FILE_TTL_DAYS``)."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class CreateUpload(BaseModel):
    """Checked by ``batchq.domain.uploads.check_new``; the schema says what passes."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field(min_length=1, max_length=1024)
    purpose: str = Field(max_length=64, json_schema_extra={"enum": ["batch"]})
    bytes: int = Field(json_schema_extra={"minimum": 1})
    mime_type: str = Field(max_length=255, json_schema_extra={"pattern": MIME_PATTERN})
    expires_after: FileExpiry | None = None


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    part_ids: list[str] = Field(max_length=MAX_PART_IDS)
    md5: str | None = Field(default=None, max_length=64)


PART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {PART_FIELD: {"type": "string", "format": "binary"}},
                "required": [PART_FIELD],
            }
        }
    },
}


@router.post("", response_model=UploadObject, openapi_extra={"requestBody": request_body(CreateUpload)})
async def create_upload(request: Request, rt: RuntimeDep, owner: OwnerDep, key: IdempotencyKeyDep) -> Response:
    raw = await read_json(request, MAX_JSON_BYTES)

    async def create() -> UploadObject:
        body = CreateUpload.model_validate(raw)
        expiry = body.expires_after.model_dump() if body.expires_after else None
        new = NewUpload(sanitize_filename(body.filename), body.purpose, body.bytes, body.mime_type, expiry)
        return await run_in_threadpool(uploads.create_upload, rt, owner, new)

    return await once(request, rt, owner, key, [json_content(raw)], create)


@router.post("/{upload_id}/parts", response_model=UploadPartObject, openapi_extra={"requestBody": PART_BODY})
async def add_part(
    upload_id: str, request: Request, rt: RuntimeDep, owner: OwnerDep, key: IdempotencyKeyDep
) -> Response:
    if key is None:  # refuse before reading the body (with a key, a replay may be due whatever the state)
        await run_in_threadpool(uploads.pending, rt, owner, upload_id, "add a part to")
    else:
        await run_in_threadpool(rt.uploads.get, upload_id, owner)
    temp = rt.files.temp_path()
    part = await receive_upload(
        request, temp, rt.settings.max_part_bytes, file_field=PART_FIELD, digest=key is not None
    )

    async def add() -> UploadPartObject:
        return await run_in_threadpool(uploads.add_part, rt, owner, upload_id, temp)

    try:
        return await once(request, rt, owner, key, form_content(part.fields, part.filename, part.sha256), add)
    finally:
        temp.unlink(missing_ok=True)  # a refused or replayed part (a recorded one was moved)


@router.post(
    "/{upload_id}/complete", response_model=UploadObject, openapi_extra={"requestBody": request_body(CompleteUpload)}
)
async def complete_upload(
    upload_id: str, request: Request, rt: RuntimeDep, owner: OwnerDep, key: IdempotencyKeyDep
) -> Response:
    raw = await read_json(request, MAX_JSON_BYTES)

    async def complete() -> UploadObject:
        body = CompleteUpload.model_validate(raw)
        return await run_in_threadpool(uploads.complete, rt, owner, upload_id, body.part_ids, body.md5)

    return await once(request, rt, owner, key, [json_content(raw)], complete)


@router.post("/{upload_id}/cancel", response_model=UploadObject)
async def cancel_upload(
    upload_id: str, request: Request, rt: RuntimeDep, owner: OwnerDep, key: IdempotencyKeyDep
) -> Response:
    async def cancel() -> UploadObject:
        return await run_in_threadpool(uploads.cancel, rt, owner, upload_id)

    return await once(request, rt, owner, key, [], cancel)
