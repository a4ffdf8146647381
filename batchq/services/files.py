"""Accepting an uploaded file (checked, then stored) and deleting one: what `POST /files`, the Uploads
API's complete and the dashboard call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from batchq.domain.ids import new_file_id
from batchq.domain.models import DeletedFile, FileObject, Owner
from batchq.domain.validation import upload_problem
from batchq.domain.windows import expiry_seconds
from batchq.errors import Conflict, InvalidRequest, PayloadTooLarge
from batchq.runtime import Runtime
from batchq.storage.files import input_shape

UPLOAD_PURPOSES = ("batch",)
log = logging.getLogger("batchq.service")


@dataclass(frozen=True)
class Upload:
    """An uploaded file as received: the form fields that matter, and where its bytes wait."""

    purpose: str | None
    filename: str
    temp: Path
    expires_after: tuple[object, object] | None = None  # (anchor, seconds), when the form names either


def accept_upload(rt: Runtime, owner: Owner, upload: Upload) -> FileObject:
    try:
        ttl_s, lines = _checked_upload(rt, upload)
        stored = rt.files.register(
            new_file_id(), owner, upload.filename, str(upload.purpose), upload.temp, lines, ttl_s
        )
    except BaseException:
        upload.temp.unlink(missing_ok=True)
        raise
    log.info("file uploaded", extra={"file_id": stored.id, "owner": owner.key, "bytes": stored.bytes})
    return stored


def _checked_upload(rt: Runtime, upload: Upload) -> tuple[int | None, int]:
    """The file's lifetime (None: the default) and its line count; 400 for what can never be used."""
    if upload.purpose not in UPLOAD_PURPOSES:
        choices = ", ".join(UPLOAD_PURPOSES)
        raise InvalidRequest(f"purpose must be one of {choices}; got {upload.purpose!r}.", param="purpose")
    ttl_s = expiry_seconds(*upload.expires_after, "expires_after") if upload.expires_after else None
    return ttl_s, _checked_input(rt, upload.temp) if upload.purpose == "batch" else 0


def _checked_input(rt: Runtime, temp: Path) -> int:
    """The line count of a batch input file; 413 past the size cap, 400 if it can never run."""
    s = rt.settings
    if temp.stat().st_size > s.max_file_bytes:  # a streamed upload stopped earlier; a joined one is checked here
        raise PayloadTooLarge(f"File exceeds the maximum upload size of {s.max_file_bytes} bytes.", param="file")
    shape = input_shape(temp, s.max_line_bytes)
    problem = upload_problem(shape.head, shape.lines, s.max_lines, s.max_line_bytes)
    if problem is not None:
        code, message = problem
        raise InvalidRequest(message, param="file", code=code)
    return shape.lines


def delete_file(rt: Runtime, owner: Owner, file_id: str) -> DeletedFile:
    """Delete a file, unless an unfinished batch still reads it (its lines would be lost)."""
    rt.files.get(file_id, owner)
    user = rt.batches.active_using(file_id)
    if user is not None:
        raise Conflict(f"File '{file_id}' is the input of batch '{user}', which has not finished.", param="file_id")
    return rt.files.delete(file_id, owner)
