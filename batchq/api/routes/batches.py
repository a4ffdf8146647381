"""``/batches``: create, get, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from batchq.api.body import read_json
from batchq.api.deps import OwnerDep, QueueDep, RuntimeDep
from batchq.api.errors import ERROR_RESPONSES
from batchq.api.idempotency import IdempotencyKeyDep, once
from batchq.domain.idempotency import json_content
from batchq.domain.models import Batch, Page
from batchq.services import batches

router = APIRouter(prefix="/batches", tags=["batches"], responses=ERROR_RESPONSES)
MAX_JSON_BYTES = 1 << 20


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=256)
    completion_window: str = Field(default="24h", max_length=16)
    metadata: dict[str, Any] | None = None
    output_expires_after: dict[str, Any] | None = None


CREATE_BODY = {"required": True, "content": {"application/json": {"schema": CreateBatch.model_json_schema()}}}


@router.post("", response_model=Batch, openapi_extra={"requestBody": CREATE_BODY})
async def create_batch(
    request: Request, rt: RuntimeDep, queue: QueueDep, owner: OwnerDep, key: IdempotencyKeyDep
) -> Response:
    raw = await read_json(request, MAX_JSON_BYTES)

    async def create() -> Batch:
        body = CreateBatch.model_validate(raw)
        new = batches.NewBatch(
            body.input_file_id, body.endpoint, body.completion_window, body.metadata, body.output_expires_after
        )
        return await run_in_threadpool(batches.create_batch, rt, queue, owner, new)

    return await once(request, rt, owner, key, [json_content(raw)], create)


@router.get("", response_model=Page[Batch])
def list_batches(
    rt: RuntimeDep, owner: OwnerDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Page[Batch]:
    return rt.batches.page(owner, after, limit)


@router.get("/{batch_id}", response_model=Batch)
def get_batch(batch_id: str, rt: RuntimeDep, owner: OwnerDep) -> Batch:
    return rt.batches.get_owned(batch_id, owner)


@router.post("/{batch_id}/cancel", response_model=Batch)
def cancel_batch(batch_id: str, rt: RuntimeDep, queue: QueueDep, owner: OwnerDep) -> Batch:
    return batches.cancel_batch(rt, queue, owner, batch_id)
