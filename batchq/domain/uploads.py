"""The Uploads API, the pure part: OpenAI's ``Upload`` and ``UploadPart`` shapes, and the rules of
an upload's life (what a new upload may declare, which states take parts, how parts are joined).

An upload is created ``pending`` with the size it will have; parts are added (each written to disk
as it streams); ``complete`` joins the named parts in order into a File, which then carries every
check ``POST /files`` makes. ``cancel`` ends it, and so does its expiry (an hour by default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from batchq.domain.models import FileObject
from batchq.errors import InvalidRequest, PayloadTooLarge

MAX_PART_IDS = 10_000
COMPLETE_GRACE_S = 3600  # a complete that started before expiry is left alone this long
MIME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
_MIME = re.compile(MIME_PATTERN)


class UploadStatus(StrEnum):
    PENDING = "pending"
    COMPLETING = "completing"  # stored only: a complete is joining the parts (shown as pending)
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class UploadObject(BaseModel):
    """OpenAI's ``Upload``."""

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class UploadPartObject(BaseModel):
    """OpenAI's ``UploadPart``."""

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


@dataclass(frozen=True)
class NewUpload:
    """A create-upload request as received."""

    filename: str
    purpose: str
    bytes: int
    mime_type: str
    expires_after: object = None  # the File's lifetime: {"anchor": "created_at", "seconds": n}


def check_new(new: NewUpload, purposes: tuple[str, ...], max_bytes: int) -> None:
    """400 (413 for the size) for an upload that could never become a usable File."""
    if new.purpose not in purposes:
        raise InvalidRequest(f"purpose must be one of {', '.join(purposes)}; got {new.purpose!r}.", param="purpose")
    if not _MIME.fullmatch(new.mime_type):
        raise InvalidRequest(f"mime_type {new.mime_type[:64]!r} is not a MIME type.", param="mime_type")
    if new.bytes <= 0:
        raise InvalidRequest("bytes must be a positive number of bytes.", param="bytes")
    if new.bytes > max_bytes:
        raise PayloadTooLarge(f"bytes exceeds the maximum file size of {max_bytes} bytes.", param="bytes")


def shown_status(stored: UploadStatus, expires_at: int, now: float) -> UploadStatus:
    """The status a client sees: a pending upload past its expiry is expired, a completing one pending."""
    if stored is UploadStatus.PENDING and now >= expires_at:
        return UploadStatus.EXPIRED
    return UploadStatus.PENDING if stored is UploadStatus.COMPLETING else stored


def not_pending(upload_id: str, status: UploadStatus, action: str) -> InvalidRequest:
    return InvalidRequest(
        f"Cannot {action} upload '{upload_id}': its status is '{status.value}', not 'pending'.",
        param="upload_id",
        code="invalid_upload_state",
    )


def part_sizes(part_ids: list[str], parts: dict[str, int], declared: int) -> list[int]:
    """The sizes of the named parts, in order, when they make exactly the declared size."""
    if not part_ids:
        raise InvalidRequest("part_ids must name at least one part.", param="part_ids")
    if len(part_ids) > MAX_PART_IDS:
        raise InvalidRequest(f"part_ids may name at most {MAX_PART_IDS} parts.", param="part_ids")
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequest("part_ids names a part more than once.", param="part_ids")
    unknown = [p for p in part_ids if p not in parts]
    if unknown:
        raise InvalidRequest(f"Part '{unknown[0][:64]}' is not a part of this upload.", param="part_ids")
    sizes = [parts[p] for p in part_ids]
    if sum(sizes) != declared:
        raise InvalidRequest(
            f"The parts hold {sum(sizes)} bytes; the upload was created with bytes={declared}.",
            param="part_ids",
            code="upload_size_mismatch",
        )
    return sizes


def check_md5(expected: str | None, actual: str) -> None:
    if expected is not None and expected.strip().lower() != actual:
        raise InvalidRequest(
            f"md5 {expected[:64]!r} does not match the joined parts ({actual}).", param="md5", code="md5_mismatch"
        )


def parts_room(declared: int, max_part: int) -> int:
    """Bytes an upload's parts may hold in all: the declared size plus one part (a part sent again)."""
    return declared + max_part
