"""Batch locks: one submit (``keys.batch_submitting``) or finalize (``keys.batch_lock``) of a batch
at a time.

A lock lives a line lease (``BATCHQ_LINE_LEASE_S``) past its holder's last heartbeat, so a killed
worker's lock is soon gone and the watchdog runs the step again. That also means a holder that
stalls longer than a lease (a GC pause, a starved CPU, a partition) may wake up after another has
taken the lock: every step that must not run twice checks its token first (``held``, atomic in
Redis with the batch's status), and the lock is given back only by its holder (compare-and-delete).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import redis

from batchq.domain.status import TERMINAL
from batchq.storage import keys, scripts
from batchq.storage.lua import Call, Script


class Holdings(Protocol):
    """Where a process records the locks it holds, for its heartbeat to renew."""

    def add(self, key: str, token: str) -> None: ...

    def discard(self, key: str) -> None: ...


@dataclass(frozen=True)
class Lock:
    key: str
    token: str


class LockStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._renew = Script(client, scripts.RENEW_LOCK)
        self._release = Script(client, scripts.RELEASE_LOCK)
        self._held = Script(client, scripts.LOCK_HELD)

    def take(self, key: str, ttl_s: float) -> Lock | None:
        token = f"{time.time_ns()}-{id(self):x}"
        return Lock(key, token) if self.r.set(key, token, nx=True, px=int(ttl_s * 1000)) else None

    def release(self, lock: Lock) -> bool:
        """Give the lock back if it is still ``lock``'s (another holder's is left alone)."""
        return bool(self._release.run({"lock": Call({"lock": lock.key}, {"token": lock.token})}))

    def held(self, lock: Lock, batch_id: str) -> bool:
        """``lock`` is still its holder's and the batch has not ended (one atomic read)."""
        terminal = sorted(s.value for s in TERMINAL)
        call = Call({"lock": lock.key, "batch": keys.batch(batch_id)}, {"token": lock.token, "terminal": terminal})
        return bool(self._held.run({"lock": call}))

    def renew(self, tokens: dict[str, str], ttl_s: float) -> None:
        """The heartbeat's part: the batch locks held here (key -> token) live another ``ttl_s``."""
        if not tokens:
            return
        pipe = self.r.pipeline(transaction=False)
        for key, token in tokens.items():
            self._renew.run({"lock": Call({"lock": key}, {"token": token, "ttl_ms": int(ttl_s * 1000)})}, pipe)
        pipe.execute()


@contextmanager
def batch_lock(store: LockStore, holdings: Holdings, key: str, ttl_s: float) -> Iterator[Lock | None]:
    """The lock ``key`` for the block (None: another holds it), renewed by the heartbeat meanwhile."""
    lock = store.take(key, ttl_s)
    if lock is not None:
        holdings.add(key, lock.token)
    try:
        yield lock
    finally:
        if lock is not None:
            holdings.discard(key)
            store.release(lock)
