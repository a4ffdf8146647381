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
from batchq.domain.scheduling import Verdict
from batchq.domain.status import STAMP, Status, is_terminal, sources_of
from batchq.errors import NotFound
from batchq.storage import clock, keys, schema, scripts
from batchq.storage.lua import Call, Script

_OFFSET = struct.Struct("<QI")  # byte offset and length of one request line
ORDER_CHUNK = 1000  # result lines read per round trip when writing the files
_INT_FIELDS = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip
_STR_FIELDS = ("endpoint", "input_file_id", "completion_window", "output_file_id", "error_file_id", "model")


@dataclass(frozen=True)
class LineStart:
    verdict: Verdict
    slot: bool = False  # the limiter slot asked for with the line was granted


@dataclass(frozen=True)
class Bookkeeping:
    """The batch record's own fields that several modules read (not part of the OpenAI object)."""

    owner: str  # Owner.key: account and on-behalf-of identity
    account: str  # the tenant, for quotas and the scheduler
    output_ttl_s: int | None  # output_expires_after, applied to the result files
    progress_at: float | None  # when a line was last stored
    reserved_lines: int | None  # lines reserved against the account's quota
    finalize_failed_at: float | None = None  # the last finalize that could not write the result files


@dataclass(frozen=True)
class LineSource:
    """Where a batch's lines come from and go to: fixed when the batch is created."""

    input_file_id: str
    endpoint: str
    expires_at: float | None = None  # a line waiting for a down upstream stops waiting then
    route: str = ""  # the one route all its lines go to ('' when several): the scheduler parks it then


@dataclass(frozen=True)
class StoredResults:
    """A slice of the result lines stored so far, in the order they were stored."""

    status: Status | None  # None: the batch record is gone
    stored: int  # lines stored so far (the order list's length; 0 once the working keys are dropped)
    values: list[bytes]  # b"o"/b"e" + the result line, from the position asked for


@dataclass(frozen=True)
class Progress:
    accepted: bool
    done: int
    total: int
    health: bytes = b""  # the route's breaker after the slot given back with the line (RELEASE's reply)

    @property
    def last(self) -> bool:
        return self.accepted and self.done >= self.total


class BatchStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._transition = client.register_script(scripts.TRANSITION)
        self._begin = Script(client, scripts.BEGIN_LINE, grouped_calls=True)  # a worker's threads' calls
        self._complete = Script(client, scripts.COMPLETE_LINE, grouped_calls=True)  # share round trips
        self._read_results = Script(client, scripts.READ_RESULTS)
        self._renew_held = Script(client, scripts.RENEW_HELD)
        self._sources: dict[str, LineSource] = {}  # per process: read once per batch, never changes

    # --- records -------------------------------------------------------------------------

    def create(
        self, batch: Batch, owner: Owner, reserved_lines: int | None = None, output_ttl_s: int | None = None
    ) -> None:
        fields = _to_hash(batch) | {"owner": owner.key, "account": owner.account} | schema.written()
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

    def bookkeeping(self, batch_id: str) -> Bookkeeping | None:
        names = ["owner", "account", "output_ttl_s", "progress_at", "reserved_lines", "finalize_failed_at"]
        names.append(schema.FIELD)
        owner, account, ttl, progress, reserved, failed_at, version = self.r.hmget(keys.batch(batch_id), names)
        if owner is None:
            return None
        schema.check(version, f"batch {batch_id}")
        return Bookkeeping(
            owner=owner.decode(),
            account=(account or b"").decode(),
            output_ttl_s=int(ttl) if ttl else None,
            progress_at=float(progress) if progress else None,
            reserved_lines=int(reserved) if reserved else None,
            finalize_failed_at=float(failed_at) if failed_at else None,
        )

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
        record = self.bookkeeping(batch_id) if is_terminal(target) else None
        account = record.account if record else None
        if account:
            keys_.append(keys.usage(account))  # the batch's reservation is given back with its end
        return bool(self._transition(keys=keys_, args=[*args, *sources, *pairs]))

    def set_fields(self, batch_id: str, **fields: Any) -> None:
        self.r.hset(keys.batch(batch_id), mapping={k: _encode(v) for k, v in fields.items()})

    def finalize_failed(self, batch_id: str, reason: str, now: float) -> None:
        """A finalize could not write the result files: since when it fails, why, and one more in the count."""
        pipe = self.r.pipeline()
        pipe.hsetnx(keys.batch(batch_id), "finalize_failing_since", int(now))
        pipe.hset(keys.batch(batch_id), mapping={"finalize_error": reason[:500], "finalize_failed_at": now})
        pipe.hincrby(keys.STATS, keys.STAT_FINALIZE_FAILURES, 1)
        pipe.execute()

    def finalize_written(self, batch_id: str) -> None:
        """The result files are written: the batch no longer shows a failing finalize."""
        self.r.hdel(keys.batch(batch_id), "finalize_failing_since", "finalize_error", "finalize_failed_at")

    def touch(self, batch_id: str, now: float) -> None:
        """Count as progress now (the watchdog gives a batch it acted on a lease period)."""
        self.r.hset(keys.batch(batch_id), "progress_at", int(now))

    # --- lines -----------------------------------------------------------------------------

    def save_offsets(self, batch_id: str, packed: bytes) -> None:
        self.r.set(keys.batch_offsets(batch_id), packed, ex=keys.RESULT_TTL_S)

    def offsets(self, batch_id: str) -> list[tuple[int, int]]:
        packed = self.r.get(keys.batch_offsets(batch_id)) or b""
        return [_OFFSET.unpack_from(packed, i) for i in range(0, len(packed), _OFFSET.size)]

    def line_source(self, batch_id: str) -> LineSource | None:
        source = self._sources.get(batch_id)
        if source is None:
            fields = ["input_file_id", "endpoint", "expires_at", "route", schema.FIELD]
            file_id, endpoint, expires, route, version = self.r.hmget(keys.batch(batch_id), fields)
            if file_id is None or endpoint is None:
                return None
            schema.check(version, f"batch {batch_id}")
            if len(self._sources) >= 4096:
                self._sources.clear()
            deadline = float(expires) if expires else None
            route_name = (route or b"").decode()
            source = self._sources[batch_id] = LineSource(file_id.decode(), endpoint.decode(), deadline, route_name)
        return source

    def begin_line(
        self, batch_id: str, index: int, lease_s: float, slot: Call | None = None, fill: Call | None = None
    ) -> LineStart:
        """Lease line ``index`` if it may run; with ``slot``, also take that limiter slot if it does.

        With ``fill`` (the scheduler's part), the same call lets the next granted line into the
        queue: every delivered task takes one out of it.
        """
        now = clock.now()  # Redis's time: the watchdog reads the lease on it, whatever this host's clock
        line = {"batch": keys.batch(batch_id), "done": keys.batch_done(batch_id), "leases": keys.batch_leases(batch_id)}
        parts = {"line": Call(line, {"index": index, "lease_until": now + lease_s, "now": now})}
        if slot is not None:
            parts["slot"] = slot
        if fill is not None:
            parts["sched"] = fill
        verdict, granted = self._begin.run(parts)
        return LineStart(Verdict(verdict.decode()), granted == b"0")

    def renew_held(self, batch_id: str, indices: list[int], lease_s: float) -> int:
        """Renew the leases of these lines that still have one (the worker's heartbeat); returns how many."""
        call = Call({"leases": keys.batch_leases(batch_id)}, {"indices": indices, "lease_until": clock.now() + lease_s})
        return int(self._renew_held.run({"line": call}))

    def complete_line(self, batch_id: str, index: int, result: ResultLine, release: Call | None = None) -> Progress:
        """Store the line's result once; with ``release``, also give back that limiter slot."""
        parts = {"line": _complete_call(batch_id, index, result)}
        if release is not None:
            parts["slot"] = release
        reply = self._complete.run(parts)
        return Progress(bool(reply[0]), int(reply[1]), int(reply[2]), reply[3] if len(reply) > 3 else b"")

    def complete_lines(self, batch_id: str, results: list[tuple[int, ResultLine]]) -> None:
        """Store many results at once (lines claimed by cancel, expiry or the watchdog)."""
        pipe = self.r.pipeline(transaction=False)
        for index, result in results:
            self._complete.run({"line": _complete_call(batch_id, index, result)}, client=pipe)
        pipe.execute()

    def done_bitmap(self, batch_id: str) -> bytes:
        return self.r.get(keys.batch_done(batch_id)) or b""

    def busy(self, batch_id: str) -> bool:
        """A submit or a finalize of the batch runs now (its worker beats)."""
        return bool(self.r.exists(keys.batch_lock(batch_id), keys.batch_submitting(batch_id)))

    def leases(self, batch_id: str) -> dict[int, float]:
        raw = self.r.hgetall(keys.batch_leases(batch_id))
        return {int(k): float(v) for k, v in raw.items()}

    def drop_lease(self, batch_id: str, index: int) -> None:
        self.r.hdel(keys.batch_leases(batch_id), str(index))

    def count_requeue(self, batch_id: str, index: int) -> int:
        return int(self.r.hincrby(keys.batch_attempts(batch_id), str(index), 1))

    def stored_results(self, batch_id: str, start: int, count: int, max_bytes: int) -> StoredResults:
        """Up to ``count`` result lines from position ``start`` of the store order (and, after the
        first, at most ``max_bytes``), with the batch's status, read in one atomic step."""
        k = {
            "batch": keys.batch(batch_id),
            "order": keys.batch_order(batch_id),
            "results": keys.batch_results(batch_id),
        }
        reply = self._read_results.run({"feed": Call(k, {"start": start, "count": count, "max_bytes": max_bytes})})
        status = Status(reply[0].decode()) if reply[0] else None
        return StoredResults(status, int(reply[1]), list(reply[2:]))

    def iter_results(self, batch_id: str) -> Iterator[tuple[bytes, bytes]]:
        """(line index, b"o"/b"e" + result line): in the order the lines were stored, then any
        result missing from the order list (stored by a version without it); each index once."""
        seen: set[bytes] = set()
        order, results = keys.batch_order(batch_id), keys.batch_results(batch_id)
        for start in range(0, int(self.r.llen(order)), ORDER_CHUNK):
            indices = self.r.lrange(order, start, start + ORDER_CHUNK - 1)
            for index, value in zip(indices, self.r.hmget(results, indices), strict=True):
                if value is not None and index not in seen:
                    seen.add(index)
                    yield index, value
        if int(self.r.hlen(results)) > len(seen):
            for index, value in self.r.hscan_iter(results, count=1000):
                if index not in seen:  # HSCAN may yield an entry twice
                    seen.add(index)
                    yield index, value

    def drop_working_keys(self, batch_id: str, after_s: int = keys.WORKING_KEPT_S) -> None:
        """The batch ended: its working keys expire ``after_s`` from now, not at once, so a finalize
        that stalled and wakes up late reads the very lines the files were written from (it puts
        nothing in place either: ``LockStore.held``)."""
        working = (
            keys.batch_results, keys.batch_leases, keys.batch_attempts, keys.batch_offsets, keys.batch_done,
            keys.batch_pending, keys.batch_order,
        )  # fmt: skip
        pipe = self.r.pipeline(transaction=False)
        for key in working:
            pipe.expire(key(batch_id), after_s)
        pipe.execute()


def _complete_call(batch_id: str, index: int, result: ResultLine) -> Call:
    u = result.usage
    line_keys = {
        "batch": keys.batch(batch_id), "done": keys.batch_done(batch_id), "results": keys.batch_results(batch_id),
        "order": keys.batch_order(batch_id), "leases": keys.batch_leases(batch_id), "stats": keys.STATS,
        "tenant_lines": keys.TENANT_LINES,
    }  # fmt: skip
    args = {
        "index": index, "ok": int(result.ok), "data": result.data, "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens, "total_tokens": u.total_tokens, "now": int(clock.now()),
        "ttl": keys.RESULT_TTL_S, "ttl_every": keys.RESULT_TTL_RENEW_S,
    }  # fmt: skip
    return Call(line_keys, args)


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
    schema.check(h.get(schema.FIELD), f"batch {h.get('id', b'').decode()}")
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
