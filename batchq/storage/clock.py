"""One clock for every lease and slot: Redis's ``TIME``, as this process last measured it.

Leases and upstream slots are stamped by the workers and judged by the watchdog, often on other
hosts. Each host's own clock may be off by seconds, more than a line lease's 10 s allows (a
watchdog 9 s ahead would take every lease for run out). So each process measures the offset of its
clock to Redis's (``sync``: one ``TIME``, at start, at every heartbeat and every watchdog sweep)
and stamps with ``now()``: the local clock plus that offset. The error left is the round trip of
the last ``TIME`` plus the drift of the local clock since (milliseconds), and a clock stepped by
NTP is caught at the next beat (``CHECK_S``, 2 s). The stamps are made in Python, not in the
scripts, because ``BEGIN_LINE`` knows a lease it wrote itself (a call retried after a lost reply)
by the exact ``lease_until`` the client chose.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger("batchq.clock")
WARN_OFF_S = 1.0  # a local clock this far from Redis's is logged once at start


class RedisClock:
    def __init__(self) -> None:
        self.offset = 0.0  # Redis's TIME minus this host's time.time()
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self.offset

    def sync(self, client: redis.Redis) -> float:
        """Measure the offset again (one ``TIME``); returns Redis's time now."""
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        with self._lock:
            self.offset = seconds + micros / 1e6 - (before + after) / 2
        return seconds + micros / 1e6 + (time.time() - after)


CLOCK = RedisClock()  # process-wide: every Redis client of a deployment reads the same server's time


def now() -> float:
    """Redis's time, as this process last measured it (``time.time()`` until the first ``sync``)."""
    return CLOCK.now()


def sync(client: redis.Redis) -> float:
    return CLOCK.sync(client)


def check_at_start(client: redis.Redis) -> None:
    """Measure the offset once; a WARNING when this host's clock is more than ``WARN_OFF_S`` off
    (leases and slots still work: they are stamped on Redis's clock). Never raises."""
    try:
        sync(client)
    except redis.RedisError as exc:
        log.info("clock not compared with redis TIME", extra={"reason": str(exc)})
        return
    if abs(CLOCK.offset) > WARN_OFF_S:
        log.warning(
            "this host's clock differs from redis TIME; leases use redis's (fix NTP on this host)",
            extra={"offset_s": round(CLOCK.offset, 3)},
        )
