"""Uploads (OpenAI's Uploads API): records in Redis, parts on disk under ``DATA_DIR/uploads/<id>/``.

An upload's status changes only through ``MOVE`` (compare-and-set on the record), and a part is
reserved only through ``ADD_PART`` (the upload is pending, not past its expiry, and its parts stay
within their room), so a part, a complete, a cancel and the expiry sweep never cross each other.

A part is reserved first, then its file is moved into place, then the status is read again. Every
path that removes an upload's directory (cancel, completed, expired) moves the status away from
pending first and removes after, so a part that still sees ``pending`` after its move is removed
with the directory, and a part that sees anything else withdraws itself (its file, its
reservation, the directory when it was the last). No interleaving leaves a part file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from batchq.domain.ids import looks_like
from batchq.domain.models import Owner
from batchq.domain.uploads import COMPLETE_GRACE_S, UploadObject, UploadStatus, shown_status
from batchq.errors import NotFound
from batchq.storage import keys, schema
from batchq.storage.files import private_dir
from batchq.storage.identity import Deployment
from batchq.storage.lua import Call, Script

OK = "ok"
GONE = "gone"  # the record is no more (past its retention)

# Move the record from one of a.from to a.to (and record a.file_id). A pending upload past its
# expiry (when a.now is given) becomes expired instead. Returns 'ok', else the status it has.
MOVE = """
local k, a = part('move')
local status = redis.call('HGET', k.rec, 'status')
if not status then return 'gone' end
local allowed = false
for _, s in ipairs(a.from) do if s == status then allowed = true end end
if not allowed then return status end
if a.now and status == 'pending' and tonumber(a.now) >= tonumber(redis.call('HGET', k.rec, 'expires_at')) then
  redis.call('HSET', k.rec, 'status', 'expired')
  return 'expired'
end
redis.call('HSET', k.rec, 'status', a.to)
if a.file_id then redis.call('HSET', k.rec, 'file_id', a.file_id) end
return 'ok'
"""

# Reserve a part of a.size bytes while the upload is pending and its parts fit in a.room bytes.
ADD_PART = """
local k, a = part('part')
local status = redis.call('HGET', k.rec, 'status')
if not status then return 'gone' end
if status ~= 'pending' then return status end
local expires_at = tonumber(redis.call('HGET', k.rec, 'expires_at'))
if tonumber(a.now) >= expires_at then
  redis.call('HSET', k.rec, 'status', 'expired')
  return 'expired'
end
local stored = tonumber(redis.call('HGET', k.rec, 'stored') or '0')
if stored + tonumber(a.size) > tonumber(a.room) then return 'full' end
redis.call('HINCRBY', k.rec, 'stored', a.size)
redis.call('HSET', k.parts, a.part, a.size)
redis.call('EXPIREAT', k.parts, expires_at + tonumber(a.retain))
return 'ok'
"""

# Undo ADD_PART's reservation of a.part (a.size bytes), when it is still there.
WITHDRAW_PART = """
local k, a = part('withdraw')
if redis.call('HDEL', k.parts, a.part) == 1 and redis.call('EXISTS', k.rec) == 1 then
  redis.call('HINCRBY', k.rec, 'stored', -tonumber(a.size))
end
return 1
"""


@dataclass(frozen=True)
class UploadRecord:
    upload: UploadObject  # as the client sees it now (without its file)
    stored: UploadStatus  # the status in the record (``completing`` included)
    owner: str
    file_ttl_s: int | None
    file_id: str | None


class UploadStore:
    def __init__(self, client: redis.Redis, data_dir: Path, deployment: Deployment | None = None) -> None:
        """``deployment``: checked before the expiry and the orphan sweep delete parts."""
        self.r = client
        self.root = Path(data_dir) / "uploads"
        self.deployment = deployment
        private_dir(self.root)
        self._move = Script(client, MOVE)
        self._add_part = Script(client, ADD_PART)
        self._withdraw = Script(client, WITHDRAW_PART)

    def create(self, upload: UploadObject, owner: Owner, mime_type: str, file_ttl_s: int | None) -> None:
        fields = upload.model_dump(exclude={"object", "file"}) | {"owner": owner.key, "mime_type": mime_type}
        fields |= schema.written()
        if file_ttl_s is not None:
            fields["file_ttl_s"] = file_ttl_s
        pipe = self.r.pipeline()
        pipe.hset(keys.upload(upload.id), mapping={k: str(v) for k, v in fields.items()})
        pipe.expireat(keys.upload(upload.id), upload.expires_at + keys.UPLOAD_RETAIN_S)
        pipe.zadd(keys.UPLOAD_EXPIRY, {upload.id: upload.expires_at})
        pipe.execute()

    def get(self, upload_id: str, owner: Owner, now: float | None = None) -> UploadRecord:
        raw = self.r.hgetall(keys.upload(upload_id)) if looks_like("upload_", upload_id) else {}
        if not raw or raw.get(b"owner", b"").decode() != owner.key:
            raise not_found(upload_id)
        return _from_hash(raw, time.time() if now is None else now)

    def part_path(self, upload_id: str, part_id: str) -> Path:
        return self.root / upload_id / part_id

    def add_part(self, upload_id: str, part_id: str, source: Path, room: int, now: float) -> str:
        """Reserve a streamed part, move it into place, and keep it while the upload is pending:
        'ok', 'full', or the status that refused it ('gone' when the record is no more)."""
        size = source.stat().st_size
        args = {"part": part_id, "size": size, "room": room, "now": now, "retain": keys.UPLOAD_RETAIN_S}
        verdict = _text(self._add_part.run({"part": Call(self._part_keys(upload_id), args)}))
        if verdict != OK:
            return verdict
        target = self.part_path(upload_id, part_id)
        try:
            with contextlib.suppress(FileExistsError):  # not Path.mkdir(exist_ok=True): it raises if the
                os.mkdir(target.parent)  # directory goes between its mkdir and its is_dir
            os.replace(source, target)
        except FileNotFoundError:  # the directory went in between: a cancel or the expiry removed it
            if self.status(upload_id) == UploadStatus.PENDING.value:
                self._unreserve(upload_id, part_id, size)
                raise  # a pending upload's directory is never removed: not a race, a real fault
        status = self.status(upload_id)
        if status != UploadStatus.PENDING.value:  # cancelled, expired or being completed meanwhile
            self._withdraw_part(upload_id, part_id, size, target)
            return status
        return OK

    def status(self, upload_id: str) -> str:
        """The stored status, or 'gone'."""
        status = self.r.hget(keys.upload(upload_id), "status")
        return GONE if status is None else _text(status)

    def _withdraw_part(self, upload_id: str, part_id: str, size: int, target: Path) -> None:
        """Take back a part of an upload that is no longer pending: its reservation, file and directory."""
        self._unreserve(upload_id, part_id, size)
        target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (other parts, or one on its way): theirs to clear
            target.parent.rmdir()

    def _unreserve(self, upload_id: str, part_id: str, size: int) -> None:
        self._withdraw.run({"withdraw": Call(self._part_keys(upload_id), {"part": part_id, "size": size})})

    @staticmethod
    def _part_keys(upload_id: str) -> dict[str, str]:
        return {"rec": keys.upload(upload_id), "parts": keys.upload_parts(upload_id)}

    def parts(self, upload_id: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(keys.upload_parts(upload_id)).items()}

    def move(self, upload_id: str, from_: list[UploadStatus], to: UploadStatus, now: float | None = None,
             file_id: str | None = None) -> str:  # fmt: skip
        """Compare-and-set the status: 'ok', or the status the upload has."""
        args: dict[str, object] = {"from": [s.value for s in from_], "to": to.value}
        if now is not None:
            args["now"] = now
        if file_id is not None:
            args["file_id"] = file_id
        return _text(self._move.run({"move": Call({"rec": keys.upload(upload_id)}, args)}))

    def remove_parts(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)
        self.r.delete(keys.upload_parts(upload_id))

    def remove_orphans(self, older_than: float) -> list[str]:
        """Remove the part directories of uploads that have no record in Redis (lost with Redis)
        and were last written before ``older_than``; returns their upload ids."""
        self._may_delete()
        old = []
        for entry in os.scandir(self.root):
            if entry.is_dir() and looks_like("upload_", entry.name) and entry.stat().st_mtime < older_than:
                old.append(entry.name)
        if not old:
            return []
        pipe = self.r.pipeline(transaction=False)
        for upload_id in old:
            pipe.exists(keys.upload(upload_id))
        gone = [upload_id for upload_id, known in zip(old, pipe.execute(), strict=True) if not known]
        for upload_id in gone:
            shutil.rmtree(self.root / upload_id, ignore_errors=True)
        return gone

    def expire_due(self, now: float | None = None, limit: int = 1000) -> int:
        """Expire the pending uploads past ``expires_at`` and clear every due upload's parts;
        returns how many uploads expired."""
        self._may_delete()
        now = time.time() if now is None else now
        due = [m.decode() for m in self.r.zrangebyscore(keys.UPLOAD_EXPIRY, "-inf", now, start=0, num=limit)]
        expired = 0
        for upload_id in due:
            expired += self.move(upload_id, [UploadStatus.PENDING], UploadStatus.EXPIRED) == OK
            if self._settled(upload_id, now):
                self.remove_parts(upload_id)
                self.r.zrem(keys.UPLOAD_EXPIRY, upload_id)
        return expired

    def _may_delete(self) -> None:
        if self.deployment is not None:
            self.deployment.guard()  # raises WrongDeployment: Redis and the data are not one deployment

    def _settled(self, upload_id: str, now: float) -> bool:
        """Not completing, or completing for far longer than any complete takes (its process died)."""
        status, expires_at = self.r.hmget(keys.upload(upload_id), ["status", "expires_at"])
        if status != UploadStatus.COMPLETING.value.encode():
            return True
        if now < int(expires_at or 0) + COMPLETE_GRACE_S:
            return False
        self.move(upload_id, [UploadStatus.COMPLETING], UploadStatus.EXPIRED)
        return True


def not_found(upload_id: str) -> NotFound:
    return NotFound(f"No upload found with id '{upload_id}'.", param="upload_id")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_hash(raw: dict[bytes, bytes], now: float) -> UploadRecord:
    h = {k.decode(): v.decode() for k, v in raw.items()}
    schema.check(h.get(schema.FIELD), f"upload {h.get('id', '')}")
    stored = UploadStatus(h["status"])
    expires_at = int(h["expires_at"])
    upload = UploadObject.model_validate({
        "id": h["id"], "bytes": int(h["bytes"]), "created_at": int(h["created_at"]), "expires_at": expires_at,
        "filename": h["filename"], "purpose": h["purpose"], "status": shown_status(stored, expires_at, now).value,
    })  # fmt: skip
    ttl = int(h["file_ttl_s"]) if "file_ttl_s" in h else None
    return UploadRecord(upload, stored, h["owner"], ttl, h.get("file_id"))
