"""``/files``: upload (streamed), list, get, download, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from batchq.api.deps import OwnerDep, RuntimeDep
from batchq.api.errors import ERROR_RESPONSES
from batchq.api.idempotency import IdempotencyKeyDep, once
from batchq.api.multipart import receive_upload
from batchq.domain.idempotency import form_content
from batchq.domain.models import DeletedFile, FileObject, Page
from batchq.services import files

router = APIRouter(prefix="/files", tags=["files"], responses=ERROR_RESPONSES)

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                    "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                    "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                },
                "required": ["file", "purpose"],
            }
        }
    },
}


@router.post("", response_model=FileObject, openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_file(request: Request, rt: RuntimeDep, owner: OwnerDep, key: IdempotencyKeyDep) -> Response:
    temp = rt.files.temp_path()
    upload = await receive_upload(request, temp, rt.settings.max_file_bytes, digest=key is not None)
    fields = upload.fields
    anchor, seconds = fields.get("expires_after[anchor]") or "created_at", fields.get("expires_after[seconds]")
    expiry = None if seconds is None and anchor == "created_at" else (anchor, seconds)  # no seconds: the default
    received = files.Upload(fields.get("purpose"), upload.filename, temp, expiry)

    async def accept() -> FileObject:
        return await run_in_threadpool(files.accept_upload, rt, owner, received)

    try:
        return await once(request, rt, owner, key, form_content(fields, upload.filename, upload.sha256), accept)
    finally:
        temp.unlink(missing_ok=True)  # a replayed or refused upload's bytes (an accepted one was moved)


@router.get("", response_model=Page[FileObject])
def list_files(
    rt: RuntimeDep,
    owner: OwnerDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> Page[FileObject]:
    return rt.files.page(owner, after, limit, purpose, order)


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, rt: RuntimeDep, owner: OwnerDep) -> FileObject:
    return rt.files.get(file_id, owner)


@router.get("/{file_id}/content", response_class=FileResponse)
def file_content(file_id: str, rt: RuntimeDep, owner: OwnerDep) -> FileResponse:
    meta = rt.files.get(file_id, owner)
    return FileResponse(rt.files.path(file_id), media_type="application/jsonl", filename=meta.filename)


@router.delete("/{file_id}", response_model=DeletedFile)
def delete_file(file_id: str, rt: RuntimeDep, owner: OwnerDep) -> DeletedFile:
    return files.delete_file(rt, owner, file_id)
