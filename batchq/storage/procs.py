"""The registry of batchq's server processes and their releases, for ``batchq doctor``.

Each API, worker and scheduler process writes its own field of ``batchq:procs`` (a hash) every
``BEAT_S`` seconds: role, host, pid, release, schema, when it started and when it last wrote. A
field not written for ``LIVE_S`` is a process gone; one not written for ``FORGET_S`` is removed by
the next beat of any process, and a process that stops cleanly removes its own. This is only an
inventory of versions: it decides nothing about leases or lost lines (the workers' liveness for
recovery is kept elsewhere, per worker, and may beat much faster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

import orjson
import redis

from batchq.storage import keys, schema
from batchq.version import version

BEAT_S = 10.0
LIVE_S = 3 * BEAT_S
FORGET_S = 86_400.0

log = logging.getLogger("batchq.procs")


@dataclass(frozen=True)
class Proc:
    role: str  # api | worker | scheduler
    host: str
    pid: int
    release: str
    schema: int
    started: float
    seen: float

    @property
    def id(self) -> str:
        return f"{self.role}:{self.host}:{self.pid}"


def this_process(role: str, now: float) -> Proc:
    return Proc(role, socket.gethostname(), os.getpid(), version(), schema.SCHEMA, now, now)


class Registry:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def beat(self, proc: Proc, now: float) -> None:
        """Record ``proc`` as seen ``now``; forget processes silent for ``FORGET_S``."""
        seen = Proc(**(asdict(proc) | {"seen": now}))
        self.r.hset(keys.PROCS, seen.id, orjson.dumps(asdict(seen)))
        gone = [p.id for p in self.all() if now - p.seen > FORGET_S]
        if gone:
            self.r.hdel(keys.PROCS, *gone)

    def forget(self, proc: Proc) -> None:
        self.r.hdel(keys.PROCS, proc.id)

    def all(self) -> list[Proc]:
        procs = []
        for raw in self.r.hvals(keys.PROCS):
            try:
                procs.append(Proc(**orjson.loads(raw)))
            except (ValueError, TypeError):  # a field of another shape: not ours to judge
                continue
        return sorted(procs, key=lambda p: (p.role, p.host, p.pid))

    def live(self, now: float) -> list[Proc]:
        return [p for p in self.all() if now - p.seen <= LIVE_S]


def keep_registered(client: redis.Redis, role: str, stop: threading.Event) -> threading.Thread:
    """Beat once now (the process is listed before it says it is ready), then in a daemon thread
    until ``stop`` is set; then forget it."""
    registry, proc = Registry(client), this_process(role, time.time())

    def beat() -> None:
        try:
            registry.beat(proc, time.time())
        except redis.RedisError:  # Redis away: the next beat tries again
            log.debug("process registry beat failed", exc_info=True)

    def run() -> None:
        while not stop.wait(BEAT_S):
            beat()
        with contextlib.suppress(redis.RedisError):
            registry.forget(proc)

    beat()

    thread = threading.Thread(target=run, name="batchq-registry", daemon=True)
    thread.start()
    return thread
