"""OpenAI-shaped objects (batch, file, list page, validation error) and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from batchq.domain.status import Status

MAX_SAFE_INTEGER = 9_007_199_254_740_991
Timestamp = int | None
T = TypeVar("T")


@dataclass(frozen=True)
class Owner:
    """Who a resource belongs to: an account (one per API key) and, optionally, an end user."""

    account: str
    user: str | None = None

    @property
    def key(self) -> str:
        return f"{self.account}|{self.user or ''}"

    @classmethod
    def from_key(cls, key: str) -> Owner:
        account, _, user = key.partition("|")
        return cls(account, user or None)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchErrorItem(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchErrorItem] = Field(default_factory=list)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: Timestamp = None
    expires_at: Timestamp = None
    finalizing_at: Timestamp = None
    completed_at: Timestamp = None
    failed_at: Timestamp = None
    expired_at: Timestamp = None
    cancelling_at: Timestamp = None
    cancelled_at: Timestamp = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: Usage | None = None


FilePurpose = Literal["batch", "batch_output"]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: Timestamp = None
    status_details: str | None = None


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class DeletedFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


def page_of(items: list[T], has_more: bool, id_of: Any) -> Page[T]:
    first = id_of(items[0]) if items else None
    last = id_of(items[-1]) if items else None
    return Page[T](data=items, first_id=first, last_id=last, has_more=has_more)
