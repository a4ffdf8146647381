"""Batch records in Redis: create, read, list, status transitions and per-line bookkeeping."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from batchq.domain.models import Batch, BatchErrors, Owner, Page, RequestCounts, Usage, page_of
from batchq.domain.results import ResultLine
from batchq.domain.status import STAMP, Status, is_terminal, sources_of
from batchq.errors import NotFound
from batchq.storage import keys, scripts
from batchq.storage.scripts import Call

_OFFSET = struct.Struct("<QI")  # byte offset and length of one request line
_INT_FIELDS = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip
_STR_FIELDS = ("endpoint", "input_file_id", "completion_window", "output_file_id", "error_file_id", "model")


@dataclass(frozen=True)
class LineStart:
    verdict: str  # go | done | leased | stop | expired
    slot: bool = False  # the limiter slot asked for with the line was granted


@dataclass(frozen=True)
class LineSource:
    """Where a batch's lines come from and go to: fixed when the batch is created."""

    input_file_id: str
    endpoint: str


@dataclass(frozen=True)
class Progress:
    accepted: bool
    done: int
    total: int

    @property
    def last(self) -> bool:
        return self.accepted and self.done >= self.total


class BatchStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._transition = client.register_script(scripts.TRANSITION)
        self._begin = client.register_script(scripts.BEGIN_LINE)
        self._begin_acquire = client.register_script(scripts.BEGIN_LINE_ACQUIRE)
        self._complete = client.register_script(scripts.COMPLETE_LINE)
        self._complete_release = client.register_script(scripts.COMPLETE_LINE_RELEASE)
        self._release_pending = client.register_script(scripts.RELEASE_PENDING)
        self._sources: dict[str, LineSource] = {}  # per process: read once per batch, never changes

    # --- records -------------------------------------------------------------------------

    def create(
        self, batch: Batch, owner: Owner, reserved_lines: int | None = None, output_ttl_s: int | None = None
    ) -> None:
        fields = _to_hash(batch) | {"owner": owner.key, "account": owner.account}
        if reserved_lines is not None:
            fields["reserved_lines"] = reserved_lines
        if output_ttl_s is not None:
            fields["output_ttl_s"] = output_ttl_s  # output_expires_after, applied to the result files
        pipe = self.r.pipeline()
        pipe.hset(keys.batch(batch.id), mapping=fields)
        pipe.zadd(keys.owner_batches(owner.key), {batch.id: time.time()})
        pipe.sadd(keys.ACTIVE_BATCHES, batch.id)
        pipe.execute()

    def get(self, batch_id: str) -> Batch | None:
        raw = self.r.hgetall(keys.batch(batch_id))
        return _from_hash(raw) if raw else None

    def get_owned(self, batch_id: str, owner: Owner) -> Batch:
        raw = self.r.hgetall(keys.batch(batch_id))
        if not raw or raw.get(b"owner", b"").decode() != owner.key:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return _from_hash(raw)

    def field(self, batch_id: str, name: str) -> str | None:
        value = self.r.hget(keys.batch(batch_id), name)
        return value.decode() if value is not None else None

    def page(self, owner: Owner, after: str | None, limit: int) -> Page[Batch]:
        ids = page_ids(self.r, keys.owner_batches(owner.key), after, limit)
        batches = [b for b in (self.get(i) for i in ids[:limit]) if b is not None]
        return page_of(batches, len(ids) > limit, lambda b: b.id)

    def active_ids(self) -> list[str]:
        return [m.decode() for m in self.r.smembers(keys.ACTIVE_BATCHES)]

    def active_using(self, file_id: str) -> str | None:
        """An unfinished batch reading ``file_id`` as its input, if any."""
        return next((b for b, f in self.active_inputs().items() if f == file_id), None)

    def active_inputs(self) -> dict[str, str]:
        """Unfinished batch id -> the input file it reads."""
        ids = self.active_ids()
        pipe = self.r.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hget(keys.batch(batch_id), "input_file_id")
        return {b: f.decode() for b, f in zip(ids, pipe.execute(), strict=True) if f}

    # --- status ----------------------------------------------------------------------------

    def move(self, batch_id: str, target: Status, **fields: Any) -> bool:
        """Atomically enter ``target`` if the current status allows it; stamps its timestamp."""
        now = int(time.time())
        sources = [s.value for s in sources_of(target)]
        pairs = [x for k, v in fields.items() for x in (k, _encode(v))]
        args = [batch_id, target.value, STAMP.get(target, ""), now, int(is_terminal(target)), len(sources)]
        keys_ = [keys.batch(batch_id), keys.ACTIVE_BATCHES, keys.STATS]
        account = self.field(batch_id, "account") if is_terminal(target) else None
        if account:
            keys_.append(keys.usage(account))  # the batch's reservation is given back with its end
        return bool(self._transition(keys=keys_, args=[*args, *sources, *pairs]))

    def set_fields(self, batch_id: str, **fields: Any) -> None:
        self.r.hset(keys.batch(batch_id), mapping={k: _encode(v) for k, v in fields.items()})

    # --- lines -----------------------------------------------------------------------------

    def save_offsets(self, batch_id: str, packed: bytes) -> None:
        self.r.set(keys.batch_offsets(batch_id), packed, ex=keys.RESULT_TTL_S)

    def offsets(self, batch_id: str) -> list[tuple[int, int]]:
        packed = self.r.get(keys.batch_offsets(batch_id)) or b""
        return [_OFFSET.unpack_from(packed, i) for i in range(0, len(packed), _OFFSET.size)]

    def line_source(self, batch_id: str) -> LineSource | None:
        source = self._sources.get(batch_id)
        if source is None:
            file_id, endpoint = self.r.hmget(keys.batch(batch_id), ["input_file_id", "endpoint"])
            if file_id is None or endpoint is None:
                return None
            if len(self._sources) >= 4096:
                self._sources.clear()
            source = self._sources[batch_id] = LineSource(file_id.decode(), endpoint.decode())
        return source

    def begin_line(self, batch_id: str, index: int, lease_s: float, slot: Call | None = None) -> LineStart:
        """Lease line ``index`` if it may run; with ``slot``, also take that limiter slot if it does."""
        now = time.time()
        keys_ = [keys.batch(batch_id), keys.batch_done(batch_id), keys.batch_leases(batch_id)]
        args: list[Any] = [index, now + lease_s, now]
        if slot is None:
            return LineStart(self._begin(keys=keys_, args=args).decode())
        verdict, granted = self._begin_acquire(keys=keys_ + slot.keys, args=args + slot.args)
        return LineStart(verdict.decode(), granted == b"0")

    def renew_lease(self, batch_id: str, index: int, lease_s: float) -> None:
        self.r.hset(keys.batch_leases(batch_id), str(index), time.time() + lease_s)

    def complete_line(self, batch_id: str, index: int, result: ResultLine, release: Call | None = None) -> Progress:
        """Store the line's result once; with ``release``, also give back that limiter slot."""
        keys_, args = _complete_call(batch_id, index, result)
        keys_ += [keys.batch_pending(batch_id), keys.LINE_QUEUE]  # a stored line lets the next one in
        if release is None:
            reply = self._complete(keys=keys_, args=args)
        else:
            reply = self._complete_release(keys=keys_ + release.keys, args=args + release.args)
        return Progress(bool(reply[0]), int(reply[1]), int(reply[2]))

    def complete_lines(self, batch_id: str, results: list[tuple[int, ResultLine]]) -> None:
        """Store many results at once (lines claimed by cancel, expiry or the watchdog)."""
        pipe = self.r.pipeline(transaction=False)
        for index, result in results:
            keys_, args = _complete_call(batch_id, index, result)
            self._complete(keys=keys_, args=args, client=pipe)
        pipe.execute()

    def pending(self, batch_id: str) -> int:
        """Line tasks waiting to enter the queue: the batch's last lines, in order."""
        return int(self.r.llen(keys.batch_pending(batch_id)))

    def release_pending(self, batch_id: str, count: int) -> int:
        """Move up to ``count`` of the batch's waiting tasks into the queue (and count them in)."""
        if count <= 0:
            return 0
        keys_ = [keys.batch_pending(batch_id), keys.LINE_QUEUE, keys.batch(batch_id)]
        return int(self._release_pending(keys=keys_, args=[count]))

    def add_queued(self, batch_id: str, count: int) -> None:
        """Count tasks put in the queue (``BEGIN_LINE`` counts each delivered one out)."""
        if count:
            self.r.hincrby(keys.batch(batch_id), "queued", count)

    def queued(self, batch_id: str) -> int:
        """The batch's tasks in the queue, about: lost tasks stay counted, duplicates count out twice."""
        return int(self.r.hget(keys.batch(batch_id), "queued") or 0)

    def done_bitmap(self, batch_id: str) -> bytes:
        return self.r.get(keys.batch_done(batch_id)) or b""

    def leases(self, batch_id: str) -> dict[int, float]:
        raw = self.r.hgetall(keys.batch_leases(batch_id))
        return {int(k): float(v) for k, v in raw.items()}

    def drop_lease(self, batch_id: str, index: int) -> None:
        self.r.hdel(keys.batch_leases(batch_id), str(index))

    def count_requeue(self, batch_id: str, index: int) -> int:
        return int(self.r.hincrby(keys.batch_attempts(batch_id), str(index), 1))

    def iter_results(self, batch_id: str) -> Iterator[tuple[bytes, bytes]]:
        """(line index, b"o"/b"e" + result line); HSCAN may yield an entry twice."""
        yield from self.r.hscan_iter(keys.batch_results(batch_id), count=1000)

    def drop_working_keys(self, batch_id: str) -> None:
        working = (
            keys.batch_results, keys.batch_leases, keys.batch_attempts, keys.batch_offsets, keys.batch_done,
            keys.batch_pending,
        )  # fmt: skip
        self.r.delete(*(k(batch_id) for k in working))


def _complete_call(batch_id: str, index: int, result: ResultLine) -> tuple[list[str], list[Any]]:
    u = result.usage
    keys_ = [keys.batch(batch_id), keys.batch_done(batch_id), keys.batch_results(batch_id)]
    keys_ += [keys.batch_leases(batch_id), keys.STATS]
    args: list[Any] = [index, int(result.ok), result.data, u.input_tokens, u.output_tokens]
    args += [u.total_tokens, int(time.time()), keys.RESULT_TTL_S]
    return keys_, args


def pack_offsets(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(_OFFSET.pack(o, n) for o, n in pairs)


def page_ids(client: redis.Redis, zkey: str, after: str | None, limit: int, newest_first: bool = True) -> list[str]:
    """Up to ``limit + 1`` members after ``after`` (the extra one tells whether there are more)."""
    start = 0
    if after:
        rank = client.zrevrank(zkey, after) if newest_first else client.zrank(zkey, after)
        if rank is None:
            return []
        start = rank + 1
    members = client.zrange(zkey, start, start + limit, desc=newest_first)
    return [m.decode() for m in members]


def _encode(value: Any) -> str | int | bytes:
    if isinstance(value, (str, int, bytes)):
        return value
    if isinstance(value, Status):
        return value.value
    return orjson.dumps(value.model_dump() if hasattr(value, "model_dump") else value)


def _to_hash(batch: Batch) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": batch.id, "status": batch.status.value}
    fields |= {k: getattr(batch, k) for k in _INT_FIELDS + _STR_FIELDS if getattr(batch, k) is not None}
    fields |= {"total": batch.request_counts.total, "completed": 0, "failed": 0}
    if batch.metadata is not None:
        fields["metadata"] = orjson.dumps(batch.metadata)
    return fields


def _from_hash(raw: dict[bytes, bytes]) -> Batch:
    h = {k.decode(): v for k, v in raw.items()}
    data: dict[str, Any] = {k: int(h[k]) for k in _INT_FIELDS if k in h}
    data |= {k: h[k].decode() for k in _STR_FIELDS if k in h}
    data["id"] = h["id"].decode()
    data["status"] = Status(h["status"].decode())
    data["request_counts"] = RequestCounts(**{k: int(h.get(k, 0)) for k in ("total", "completed", "failed")})
    if "metadata" in h:
        data["metadata"] = orjson.loads(h["metadata"])
    if "errors" in h:
        data["errors"] = BatchErrors.model_validate_json(h["errors"])
    data["usage"] = _usage(h)
    return Batch(**data)


def _usage(h: dict[str, bytes]) -> Usage | None:
    if int(h.get("completed", 0)) == 0:
        return None
    return Usage(
        input_tokens=int(h.get("usage_input", 0)),
        output_tokens=int(h.get("usage_output", 0)),
        total_tokens=int(h.get("usage_total", 0)),
    )
