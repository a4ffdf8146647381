"""Files: bytes on the local filesystem (``BATCHQ_DATA_DIR``), metadata in Redis.

On a cluster the data directory is a shared volume mounted by the API and every worker.
A path from a client never touches the filesystem: paths are built from our own ids.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import redis

from batchq.domain.ids import looks_like
from batchq.domain.models import DeletedFile, FileObject, Owner, Page, page_of
from batchq.errors import NotFound
from batchq.storage import keys, schema
from batchq.storage.batches import page_ids
from batchq.storage.identity import Deployment

KEPT_RECHECK_S = 3600  # an expired file still read by a batch is looked at again after this


log = logging.getLogger("batchq.files")


def private_dir(path: Path) -> None:
    """A directory only batchq's own user may enter: the files in it hold every tenant's prompts
    and answers, whatever the umask made of the files themselves."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except PermissionError:  # another user's directory (a volume mounted as is): leave it as it is
        log.warning("cannot make the data directory private", extra={"path": str(path)})


class FileStore:
    def __init__(
        self, client: redis.Redis, data_dir: Path, ttl_days: int = 30, deployment: Deployment | None = None
    ) -> None:
        """``deployment``: checked before any file is deleted (``batchq.domain.identity``)."""
        self.r = client
        self.root = Path(data_dir)
        self.ttl_s = ttl_days * 86_400
        self.deployment = deployment
        private_dir(self.root / "files")
        private_dir(self.root / "tmp")

    def path(self, file_id: str) -> Path:
        if not looks_like("file-", file_id):
            raise NotFound(f"No file found with id '{file_id}'.", param="file_id")
        return self.root / "files" / file_id

    def temp_path(self) -> Path:
        return self.root / "tmp" / f"upload-{secrets.token_hex(16)}"

    def register(
        self, file_id: str, owner: Owner, filename: str, purpose: str, source: Path, lines: int = 0,
        ttl_s: int | None = None,
    ) -> FileObject:  # fmt: skip
        """Move a finished temp file into place and record it (atomic rename); ``lines`` of requests at most.

        It expires ``ttl_s`` seconds from now (default: ``BATCHQ_FILE_TTL_DAYS``)."""
        target = self.path(file_id)
        os.replace(source, target)
        now = int(time.time())
        obj = FileObject(
            id=file_id, bytes=target.stat().st_size, created_at=now, filename=filename,
            purpose=purpose, expires_at=now + (ttl_s or self.ttl_s),
        )  # fmt: skip
        try:
            self._record(obj, owner, lines)
        except BaseException:
            target.unlink(missing_ok=True)  # no file without its record (else the orphan sweep finds it)
            raise
        return obj

    def line_count(self, file_id: str) -> int:
        """Lines in an uploaded input file (counted once, at upload)."""
        return int(self.r.hget(keys.file(file_id), "lines") or 0)

    @contextmanager
    def writer(self) -> Iterator[tuple[BinaryIO, Path]]:
        """A temp file to write a generated file into; removed unless registered."""
        tmp = self.temp_path()
        try:
            with open(tmp, "wb") as handle:
                yield handle, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, file_id: str, owner: Owner) -> FileObject:
        raw = self.r.hgetall(keys.file(file_id)) if looks_like("file-", file_id) else {}
        if not raw or raw.get(b"owner", b"").decode() != owner.key:
            raise NotFound(f"No file found with id '{file_id}'.", param="file_id")
        return _from_hash(raw)

    def page(self, owner: Owner, after: str | None, limit: int, purpose: str | None, order: str) -> Page[FileObject]:
        zkey = keys.owner_files(owner.key)
        scan = max(limit * 4, 100) if purpose else limit
        ids = page_ids(self.r, zkey, after, scan, newest_first=order == "desc")
        found = [f for f in (self._load(i) for i in ids) if f and (purpose is None or f.purpose == purpose)]
        return page_of(found[:limit], len(found) > limit or len(ids) > scan, lambda f: f.id)

    def delete(self, file_id: str, owner: Owner) -> DeletedFile:
        self._may_delete()
        self.get(file_id, owner)
        self._remove(file_id, owner.key)
        return DeletedFile(id=file_id)

    def delete_expired(self, now: float | None = None, limit: int = 1000, keep: Set[str] = frozenset()) -> int:
        """Delete files past ``expires_at`` (and upload leftovers older than a day); returns how many.

        Files in ``keep`` (the inputs of unfinished batches) stay until their batch ends: they are
        looked at again an hour later.
        """
        self._may_delete()
        now = time.time() if now is None else now
        expired = [m.decode() for m in self.r.zrangebyscore(keys.FILE_EXPIRY, "-inf", now, start=0, num=limit)]
        kept = [file_id for file_id in expired if file_id in keep]
        if kept:
            self.r.zadd(keys.FILE_EXPIRY, dict.fromkeys(kept, now + KEPT_RECHECK_S), xx=True)
        gone = [file_id for file_id in expired if file_id not in keep]
        for file_id in gone:
            owner = self.r.hget(keys.file(file_id), "owner")
            self._remove(file_id, owner.decode() if owner else "")
        self._sweep_tmp(now - 86_400)
        return len(gone)

    def remove_orphans(self, older_than: float, batch: int = 1000) -> list[tuple[str, int]]:
        """Remove files on disk that have no record in Redis and were last written before
        ``older_than``: lost with Redis, or left by a crash between writing and recording.
        Returns (file id, bytes) of each one removed."""
        self._may_delete()
        removed: list[tuple[str, int]] = []
        candidates = self._old_files(older_than)
        for start in range(0, len(candidates), batch):
            chunk = candidates[start : start + batch]
            pipe = self.r.pipeline(transaction=False)
            for file_id, _ in chunk:
                pipe.exists(keys.file(file_id))
            for (file_id, size), known in zip(chunk, pipe.execute(), strict=True):
                if not known:
                    (self.root / "files" / file_id).unlink(missing_ok=True)
                    removed.append((file_id, size))
        if removed:
            self.r.hincrby(keys.STATS, keys.STAT_ORPHANS_REMOVED, len(removed))
        return removed

    def _may_delete(self) -> None:
        if self.deployment is not None:
            self.deployment.guard()  # raises WrongDeployment: Redis and this directory are not one deployment

    def _old_files(self, older_than: float) -> list[tuple[str, int]]:
        found = []
        with os.scandir(self.root / "files") as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat()
                    if entry.is_file() and looks_like("file-", entry.name) and stat.st_mtime < older_than:
                        found.append((entry.name, stat.st_size))
        return found

    def _remove(self, file_id: str, owner_key: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(keys.file(file_id))
        pipe.zrem(keys.owner_files(owner_key), file_id)
        pipe.zrem(keys.FILE_EXPIRY, file_id)
        pipe.execute()
        self.path(file_id).unlink(missing_ok=True)

    def _sweep_tmp(self, older_than: float) -> None:
        for leftover in (self.root / "tmp").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < older_than:
                    leftover.unlink()

    def _record(self, obj: FileObject, owner: Owner, lines: int) -> None:
        fields = obj.model_dump(exclude_none=True, exclude={"object", "status"}) | {"owner": owner.key, "lines": lines}
        fields |= schema.written()
        pipe = self.r.pipeline()
        pipe.hset(keys.file(obj.id), mapping={k: str(v) for k, v in fields.items()})
        pipe.zadd(keys.owner_files(owner.key), {obj.id: time.time()})
        pipe.zadd(keys.FILE_EXPIRY, {obj.id: obj.expires_at or 0})
        pipe.execute()

    def _load(self, file_id: str) -> FileObject | None:
        raw = self.r.hgetall(keys.file(file_id))
        return _from_hash(raw) if raw else None


@dataclass(frozen=True)
class InputShape:
    """What an upload-time check needs of a batch input file, read without parsing it all."""

    lines: int  # non-blank lines: an upper bound on the file's requests (blank lines are not requests)
    head: bytes  # the first line, without its newline, cut at ``head_limit`` + 1 bytes


_NON_BLANK = re.compile(rb"\S[^\n]*")  # from a line's first non-whitespace byte to its end: one per line


def input_shape(path: Path, head_limit: int) -> InputShape:
    """Counts the non-blank lines in 1 MiB reads and reads the first line."""
    with open(path, "rb") as handle:
        head = handle.readline(head_limit + 1).rstrip(b"\r\n")
        handle.seek(0)
        return InputShape(_non_blank_lines(handle), head)


def _non_blank_lines(handle: BinaryIO) -> int:
    """Lines holding anything but whitespace; a line cut by a read is counted once."""
    count, counted = 0, False  # counted: the line running into this read was counted already
    while chunk := handle.read(1 << 20):
        first_newline = chunk.find(b"\n")
        head_end = len(chunk) if first_newline < 0 else first_newline
        count += sum(1 for _ in _NON_BLANK.finditer(chunk))
        if counted and _NON_BLANK.search(chunk, 0, head_end):
            count -= 1
        tail = _NON_BLANK.search(chunk, chunk.rfind(b"\n") + 1) is not None
        counted = tail or (counted and first_newline < 0)
    return count


def _from_hash(raw: dict[bytes, bytes]) -> FileObject:
    h = {k.decode(): v.decode() for k, v in raw.items()}
    schema.check(h.get(schema.FIELD), f"file {h.get('id', '')}")
    return FileObject(
        id=h["id"], bytes=int(h["bytes"]), created_at=int(h["created_at"]), filename=h["filename"],
        purpose=h["purpose"], expires_at=int(h["expires_at"]) if "expires_at" in h else None,
    )  # fmt: skip
