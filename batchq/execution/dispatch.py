"""Handing a batch's line tasks to the scheduler: who its tenant is and when it becomes urgent."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from batchq.domain.models import Batch
from batchq.domain.scheduling import urgent_at
from batchq.runtime import Runtime


@dataclass(frozen=True)
class Entry:
    """A batch as the scheduler needs it."""

    batch_id: str
    tenant: str  # the account of the key that created it
    urgent_at: float


def entry_of(rt: Runtime, batch: Batch) -> Entry:
    record = rt.batches.bookkeeping(batch.id)
    tenant = record.account if record else ""
    expires = batch.expires_at if batch.expires_at is not None else batch.created_at + 86_400
    return Entry(batch.id, tenant, urgent_at(batch.created_at, expires, rt.settings.urgent_share))


def add(rt: Runtime, batch_id: str, messages: Iterable[bytes]) -> None:
    """A dispatched batch's tasks, in line order, join the waiting work."""
    entry = _entry(rt, batch_id)
    if entry is not None:
        rt.scheduler.add(entry.batch_id, entry.tenant, messages, entry.urgent_at, time.time())


def put_back(rt: Runtime, batch_id: str, messages: Sequence[bytes]) -> None:
    """Tasks of lost lines: first in their batch's next turn."""
    entry = _entry(rt, batch_id)
    if entry is not None:
        rt.scheduler.put_back(entry.batch_id, entry.tenant, messages, entry.urgent_at, time.time())


def enroll(rt: Runtime, batch: Batch) -> None:
    """Make sure a running batch with waiting lines is known to the scheduler (idempotent)."""
    entry = entry_of(rt, batch)
    rt.scheduler.enroll(entry.batch_id, entry.tenant, entry.urgent_at, time.time())


def _entry(rt: Runtime, batch_id: str) -> Entry | None:
    batch = rt.batches.get(batch_id)
    return entry_of(rt, batch) if batch is not None else None
