"""Per-account limits: API requests per minute, batches in flight, and lines enqueued.

A batch reserves one "batch" and its line count when it is created; the reservation is given
back, once, by the same script that moves the batch to a terminal status (``scripts.TRANSITION``).
"""

from __future__ import annotations

import time

import redis

from batchq.errors import RateLimited
from batchq.storage import keys

# KEYS: usage. ARGV: lines, max batches, max lines (0: no limit). Returns 0 (reserved), 1 or 2 (over).
RESERVE = """
local b = tonumber(redis.call('HGET', KEYS[1], 'batches') or '0')
local l = tonumber(redis.call('HGET', KEYS[1], 'lines') or '0')
local lines = tonumber(ARGV[1])
if tonumber(ARGV[2]) > 0 and b + 1 > tonumber(ARGV[2]) then return 1 end
if tonumber(ARGV[3]) > 0 and l + lines > tonumber(ARGV[3]) then return 2 end
redis.call('HINCRBY', KEYS[1], 'batches', 1)
redis.call('HINCRBY', KEYS[1], 'lines', lines)
return 0
"""

RETRY_AFTER_S = 60


class Quotas:
    def __init__(self, client: redis.Redis, rpm: int, max_batches: int, max_lines: int) -> None:
        self.r = client
        self.rpm = rpm
        self.max_batches = max_batches
        self.max_lines = max_lines
        self._reserve = client.register_script(RESERVE)

    def count_request(self, account: str) -> None:
        """One API request; raises ``RateLimited`` past the per-minute limit."""
        if self.rpm <= 0:
            return
        now = time.time()
        key = keys.api_rate(account, int(now // 60))
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
        if count > self.rpm:
            retry = max(1, 60 - int(now % 60))
            raise RateLimited(f"Rate limit of {self.rpm} requests per minute reached.", retry_after=retry)

    def release(self, account: str, lines: int) -> None:
        """Give a reservation back (a batch whose creation failed after reserving)."""
        pipe = self.r.pipeline()
        pipe.hincrby(keys.usage(account), "batches", -1)
        pipe.hincrby(keys.usage(account), "lines", -lines)
        pipe.execute()

    def reserve(self, account: str, lines: int) -> None:
        """Reserve room for a new batch of ``lines`` lines; raises ``RateLimited`` when over a limit."""
        verdict = int(self._reserve(keys=[keys.usage(account)], args=[lines, self.max_batches, self.max_lines]))
        if verdict == 1:
            message = f"At most {self.max_batches} batches may be in flight per API key."
            raise RateLimited(message, retry_after=RETRY_AFTER_S, code="too_many_batches")
        if verdict == 2:
            message = f"At most {self.max_lines} requests may be enqueued per API key."
            raise RateLimited(message, retry_after=RETRY_AFTER_S, code="too_many_enqueued_requests")
