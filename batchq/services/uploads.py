"""The operations behind ``/uploads`` (OpenAI's Uploads API), beside ``service.py``'s files and batches.

``complete`` joins the parts with a streaming copy (1 MiB at a time, MD5 on the way) into a temp
file, then hands it to ``files.accept_upload``: the joined file meets every check ``POST /files``
makes, and becomes a File of the same owner.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import NoReturn

from batchq.domain import uploads as rules
from batchq.domain.ids import new_part_id, new_upload_id
from batchq.domain.models import FileObject, Owner
from batchq.domain.uploads import NewUpload, UploadObject, UploadPartObject, UploadStatus
from batchq.domain.windows import expiry_seconds
from batchq.errors import InvalidRequest
from batchq.runtime import Runtime
from batchq.services import files
from batchq.storage.uploads import GONE, OK, UploadRecord, not_found

CHUNK = 1 << 20
log = logging.getLogger("batchq.uploads")


def create_upload(rt: Runtime, owner: Owner, new: NewUpload) -> UploadObject:
    rules.check_new(new, files.UPLOAD_PURPOSES, rt.settings.max_file_bytes)
    file_ttl_s = _file_ttl(new.expires_after)
    now = int(time.time())
    upload = UploadObject(
        id=new_upload_id(), bytes=new.bytes, created_at=now, expires_at=now + rt.settings.upload_ttl_s,
        filename=new.filename, purpose=new.purpose, status="pending",
    )  # fmt: skip
    rt.uploads.create(upload, owner, new.mime_type, file_ttl_s)
    log.info("upload created", extra={"upload_id": upload.id, "owner": owner.key, "bytes": upload.bytes})
    return upload


def _file_ttl(policy: object) -> int | None:
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise InvalidRequest("expires_after must be an object.", param="expires_after")
    return expiry_seconds(policy.get("anchor", "created_at"), policy.get("seconds"), "expires_after")


def pending(rt: Runtime, owner: Owner, upload_id: str, action: str) -> UploadRecord:
    """The caller's upload (404 otherwise), when it still takes parts, a complete or a cancel."""
    record = rt.uploads.get(upload_id, owner)
    if record.upload.status != UploadStatus.PENDING.value:
        _refuse(rt, upload_id, record.upload.status, action)
    return record


def add_part(rt: Runtime, owner: Owner, upload_id: str, streamed: Path) -> UploadPartObject:
    """Record a part already streamed to ``streamed`` (moved into the upload's directory)."""
    record = pending(rt, owner, upload_id, "add a part to")
    part = UploadPartObject(id=new_part_id(), created_at=int(time.time()), upload_id=upload_id)
    room = rules.parts_room(record.upload.bytes, rt.settings.max_part_bytes)
    verdict = rt.uploads.add_part(upload_id, part.id, streamed, room, time.time())
    if verdict == "full":
        raise InvalidRequest(
            f"The parts of upload '{upload_id}' would hold more than {room} bytes (its bytes plus one part).",
            param="data",
            code="upload_parts_too_large",
        )
    if verdict != OK:
        _refuse(rt, upload_id, verdict, "add a part to")
    return part


def complete(rt: Runtime, owner: Owner, upload_id: str, part_ids: list[str], md5: str | None) -> UploadObject:
    record = pending(rt, owner, upload_id, "complete")
    rules.part_sizes(part_ids, rt.uploads.parts(upload_id), record.upload.bytes)
    moved = rt.uploads.move(upload_id, [UploadStatus.PENDING], UploadStatus.COMPLETING, now=time.time())
    if moved != OK:
        _refuse(rt, upload_id, moved, "complete")
    try:
        stored = _join_and_accept(rt, owner, record, part_ids, md5)
    except BaseException:
        rt.uploads.move(upload_id, [UploadStatus.COMPLETING], UploadStatus.PENDING)  # the client may try again
        raise
    rt.uploads.move(upload_id, [UploadStatus.COMPLETING], UploadStatus.COMPLETED, file_id=stored.id)
    rt.uploads.remove_parts(upload_id)
    log.info("upload completed", extra={"upload_id": upload_id, "owner": owner.key, "file_id": stored.id})
    return record.upload.model_copy(update={"status": UploadStatus.COMPLETED.value, "file": stored})


def _join_and_accept(
    rt: Runtime, owner: Owner, record: UploadRecord, part_ids: list[str], md5: str | None
) -> FileObject:
    temp = rt.files.temp_path()
    try:
        digest = join([rt.uploads.part_path(record.upload.id, p) for p in part_ids], temp)
        rules.check_md5(md5, digest)
        expiry = ("created_at", record.file_ttl_s) if record.file_ttl_s is not None else None
        received = files.Upload(record.upload.purpose, record.upload.filename, temp, expiry)
        return files.accept_upload(rt, owner, received)
    finally:
        temp.unlink(missing_ok=True)


def join(parts: list[Path], target: Path) -> str:
    """Concatenate ``parts`` into ``target``, 1 MiB at a time; the MD5 of the whole, in hex."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(target, "wb") as out:
        for path in parts:
            with open(path, "rb") as part:
                while chunk := part.read(CHUNK):
                    md5.update(chunk)
                    out.write(chunk)
    return md5.hexdigest()


def cancel(rt: Runtime, owner: Owner, upload_id: str) -> UploadObject:
    record = rt.uploads.get(upload_id, owner)
    if record.upload.status == UploadStatus.CANCELLED.value:
        return record.upload  # cancelling twice is harmless
    moved = rt.uploads.move(upload_id, [UploadStatus.PENDING], UploadStatus.CANCELLED, now=time.time())
    if moved not in (OK, UploadStatus.CANCELLED.value):  # a cancel at the same time: as harmless
        _refuse(rt, upload_id, moved, "cancel")
    rt.uploads.remove_parts(upload_id)
    log.info("upload cancelled", extra={"upload_id": upload_id, "owner": owner.key})
    return record.upload.model_copy(update={"status": UploadStatus.CANCELLED.value})


def _refuse(rt: Runtime, upload_id: str, verdict: str, action: str) -> NoReturn:
    """400 ``invalid_upload_state`` naming the status a store verdict reports (404 when it is gone)."""
    if verdict == GONE:  # the record ran out between the read and the script
        raise not_found(upload_id)
    status = UploadStatus(verdict)
    if status is UploadStatus.COMPLETING:
        message = f"Cannot {action} upload '{upload_id}': it is being completed."
        raise InvalidRequest(message, param="upload_id", code="invalid_upload_state")
    if status is UploadStatus.EXPIRED:  # noticed before the sweep: it expires, and its parts go, now
        rt.uploads.move(upload_id, [UploadStatus.PENDING], UploadStatus.EXPIRED)
        rt.uploads.remove_parts(upload_id)
    raise rules.not_pending(upload_id, status, action)
