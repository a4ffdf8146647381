"""What operators see in ``batchq top``: every unfinished batch of every tenant, with its progress,
and each tenant's share of the workers.

``read_overview`` reads Redis in two round trips (three or more with over ``CHUNK`` active
batches); ``rate``, ``eta_s`` and ``tenant_rates`` are pure, so the view can show rates between two
snapshots.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from batchq.domain.models import Owner
from batchq.storage import keys

CHUNK = 1000  # batches per pipeline round trip
FIELDS = (
    "status", "owner", "total", "completed", "failed", "created_at", "in_progress_at", "expires_at",
    "finalize_failing_since", "finalize_error",
)  # fmt: skip


@dataclass(frozen=True)
class BatchRow:
    id: str
    owner: Owner
    status: str
    total: int
    completed: int
    failed: int
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    waiting: int = 0  # line tasks not granted yet (waiting in the scheduler)
    leased: int = 0  # lines a worker holds now
    finalize_failing_since: int | None = None  # its finalize cannot write the result files (a full disk)
    finalize_error: str | None = None  # why, the last time

    @property
    def done(self) -> int:
        return self.completed + self.failed


@dataclass(frozen=True)
class TenantRow:
    account: str
    weight: float
    stored: int  # lines stored since the counters began (a counter: rates come from two snapshots)
    batches: int  # unfinished batches
    in_flight: int  # lines its batches' workers hold now
    waiting: int  # lines not granted yet


@dataclass(frozen=True)
class Overview:
    at: float  # unix time of the snapshot
    batches: list[BatchRow]
    queue_depth: int  # granted line tasks waiting in the Celery queue, all batches together
    in_flight: dict[str, int]  # requests in flight per upstream route, all workers together
    tenants: list[TenantRow] = field(default_factory=list)
    down_since: dict[str, float] = field(default_factory=dict)  # routes whose breaker is open: since when


def read_overview(client: redis.Redis, routes: Sequence[str], queue: str = keys.LINE_QUEUE) -> Overview:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.ACTIVE_BATCHES)
    lists = keys.queue_lists(queue)
    for name in lists:
        pipe.llen(name)
    for route in routes:
        pipe.zcount(keys.limit_inflight(route), now, "+inf")
        pipe.hget(keys.limit_health(route), "open_since")
    pipe.hgetall(keys.TENANT_LINES)
    pipe.hgetall(keys.SCHED_WEIGHTS)
    replies = pipe.execute()
    ids = sorted(member.decode() for member in replies[0])
    depth = sum(int(n) for n in replies[1 : 1 + len(lists)])
    per_route = replies[1 + len(lists) : -2]
    in_flight = dict(zip(routes, (int(n) for n in per_route[::2]), strict=True))
    down = {route: float(since) for route, since in zip(routes, per_route[1::2], strict=True) if since}
    rows = _rows(client, ids)
    tenants = tenant_rows(rows, _decoded(replies[-2]), _decoded(replies[-1]))
    return Overview(now, rows, depth, in_flight, tenants, down)


def _decoded(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in raw.items()}


def tenant_rows(rows: list[BatchRow], stored: dict[str, float], weights: dict[str, float]) -> list[TenantRow]:
    """One row per tenant with unfinished batches."""
    by_account: dict[str, list[BatchRow]] = {}
    for row in rows:
        by_account.setdefault(row.owner.account, []).append(row)
    return [_tenant_row(account, mine, stored, weights) for account, mine in sorted(by_account.items())]


def _tenant_row(account: str, mine: list[BatchRow], stored: dict[str, float], weights: dict[str, float]) -> TenantRow:
    return TenantRow(
        account=account, weight=weights.get(account, 1.0), stored=int(stored.get(account, 0)), batches=len(mine),
        in_flight=sum(r.leased for r in mine), waiting=sum(r.waiting for r in mine),
    )  # fmt: skip


def tenant_rates(now: Overview, before: Overview | None) -> dict[str, float]:
    """Lines stored per second per tenant between two snapshots (empty without an earlier one)."""
    if before is None or now.at <= before.at:
        return {}
    earlier = {t.account: t.stored for t in before.tenants}
    return {
        t.account: max(0, t.stored - earlier[t.account]) / (now.at - before.at)
        for t in now.tenants
        if t.account in earlier
    }


def _rows(client: redis.Redis, ids: list[str]) -> list[BatchRow]:
    rows: list[BatchRow] = []
    for start in range(0, len(ids), CHUNK):
        pipe = client.pipeline(transaction=False)
        for batch_id in ids[start : start + CHUNK]:
            pipe.hmget(keys.batch(batch_id), FIELDS)
            pipe.llen(keys.batch_pending(batch_id))
            pipe.hlen(keys.batch_leases(batch_id))
        replies = pipe.execute()
        chunk = ids[start : start + CHUNK]
        for batch_id, values, waiting, leased in zip(chunk, replies[::3], replies[1::3], replies[2::3], strict=True):
            if values[0] is not None:  # gone between the two reads
                rows.append(_row(batch_id, dict(zip(FIELDS, values, strict=True)), int(waiting), int(leased)))
    rows.sort(key=lambda row: row.created_at)
    return rows


def _row(batch_id: str, h: dict[str, Any], waiting: int, leased: int) -> BatchRow:
    def number(name: str) -> int | None:
        return int(h[name]) if h[name] is not None else None

    return BatchRow(
        id=batch_id, owner=Owner.from_key((h["owner"] or b"").decode()), status=h["status"].decode(),
        total=number("total") or 0, completed=number("completed") or 0, failed=number("failed") or 0,
        created_at=number("created_at") or 0, in_progress_at=number("in_progress_at"), expires_at=number("expires_at"),
        waiting=waiting, leased=leased, finalize_failing_since=number("finalize_failing_since"),
        finalize_error=h["finalize_error"].decode() if h["finalize_error"] else None,
    )  # fmt: skip


def rate(row: BatchRow, now: float, before: BatchRow | None = None, before_at: float | None = None) -> float | None:
    """Lines per second: since ``before`` (the same batch in an earlier snapshot), else since it started."""
    if before is not None and before_at is not None and now > before_at and row.done >= before.done:
        return (row.done - before.done) / (now - before_at)
    if row.in_progress_at is None or now <= row.in_progress_at:
        return None
    return row.done / (now - row.in_progress_at)


def span(seconds: float | None, gap: str = "", missing: str = "-") -> str:
    """A duration as ``1h05m`` or ``3m07s`` (``gap`` between the parts; ``missing`` for None)."""
    if seconds is None:
        return missing
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{gap}{minutes:02d}m" if hours else f"{minutes}m{gap}{secs:02d}s"


def eta_s(row: BatchRow, lines_per_s: float | None) -> float | None:
    """Seconds until every line is done at ``lines_per_s``; None when nothing moves."""
    if not lines_per_s or row.total == 0:
        return None
    return max(0, row.total - row.done) / lines_per_s
