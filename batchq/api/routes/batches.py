"""``/batches``: create, get, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from batchq import service
from batchq.api.deps import OwnerDep, QueueDep, RuntimeDep
from batchq.domain.models import Batch, Page

router = APIRouter(prefix="/batches", tags=["batches"])


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=256)
    completion_window: str = Field(default="24h", max_length=16)
    metadata: dict[str, Any] | None = None
    output_expires_after: dict[str, Any] | None = None


@router.post("", response_model=Batch)
def create_batch(body: CreateBatch, rt: RuntimeDep, queue: QueueDep, owner: OwnerDep) -> Batch:
    return service.create_batch(
        rt, queue, owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )


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
    return service.cancel_batch(rt, queue, owner, batch_id)
