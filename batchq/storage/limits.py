"""A distributed concurrency cap, rate limit and 429 back-off per upstream route, in Redis.

All workers share, per route: a sorted set of in-flight request tokens (each with an expiry, so
a dead worker's slots come back), a "not before" time pushed forward by any 429 with Retry-After,
a GCRA rate limiter, and an AIMD congestion window (halved at most once a second on 429s, grown by
1/window per success) that adapts the effective cap to what the upstream keeps up with.
"""

from __future__ import annotations

import random
import secrets
import time

import redis

from batchq.domain.routing import Route
from batchq.storage import keys

# KEYS: inflight, notbefore, tat, window. ARGV: now, token, ttl, cap, rpm, adaptive.
# Returns "0" (acquired), "-1" (at the cap: poll again) or seconds to wait (string).
ACQUIRE = """
local now = tonumber(ARGV[1])
local nb = tonumber(redis.call('GET', KEYS[2]) or '0')
if nb > now then return tostring(nb - now) end
local cap = tonumber(ARGV[4])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local limit = cap
  if ARGV[6] == '1' then
    local w = tonumber(redis.call('HGET', KEYS[4], 'w') or ARGV[4])
    limit = math.max(1, math.min(cap, math.floor(w)))
  end
  if redis.call('ZCARD', KEYS[1]) >= limit then return '-1' end
end
local rpm = tonumber(ARGV[5])
if rpm > 0 then
  local interval = 60.0 / rpm
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat < now then tat = now end
  if tat - now > 1.0 then return tostring(tat - now - 1.0) end
  redis.call('SET', KEYS[3], tostring(tat + interval), 'EX', 3600)
end
if cap > 0 then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2]) end
return '0'
"""

# KEYS: inflight, notbefore, window, freed. ARGV: token, now, outcome (ok|throttled|error), retry_after, cap, adaptive.
RELEASE = """
local now = tonumber(ARGV[2])
local cap = tonumber(ARGV[5])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and cap > 0 then
  redis.call('LPUSH', KEYS[4], '1')  -- wake one worker waiting for a slot
  redis.call('LTRIM', KEYS[4], 0, cap - 1)
  redis.call('EXPIRE', KEYS[4], 60)
end
if ARGV[3] == 'throttled' then
  local wait = tonumber(ARGV[4])
  if wait > 0 then
    local nb = tonumber(redis.call('GET', KEYS[2]) or '0')
    if now + wait > nb then redis.call('SET', KEYS[2], tostring(now + wait), 'EX', math.ceil(wait) + 1) end
  end
  if ARGV[6] == '1' and cap > 0 then
    local w = tonumber(redis.call('HGET', KEYS[3], 'w') or cap)
    local at = tonumber(redis.call('HGET', KEYS[3], 'at') or '0')
    if now - at >= 1.0 then
      redis.call('HSET', KEYS[3], 'w', tostring(math.max(1, w / 2)), 'at', tostring(now))
    end
  end
elseif ARGV[3] == 'ok' and ARGV[6] == '1' and cap > 0 then
  local w = tonumber(redis.call('HGET', KEYS[3], 'w') or cap)
  if w < cap then redis.call('HSET', KEYS[3], 'w', tostring(math.min(cap, w + 1 / w))) end
end
return 1
"""

FREED_WAIT_S = 0.25  # the longest a waiter blocks before it checks the cap again


class RedisLimiter:
    """Called from the worker's task threads with the process's (thread-safe) Redis client.

    Measured: the synchronous client costs about a third of ``redis.asyncio``'s CPU per call, and
    keeping these calls off the event loop keeps the loop's latency low for the HTTP traffic.
    """

    def __init__(self, client: redis.Redis, adaptive: bool, default_timeout_s: float) -> None:
        self.adaptive = adaptive
        self.default_timeout_s = default_timeout_s
        self._client = client
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)

    def acquire(self, route: Route) -> str | None:
        """Wait for a slot on ``route``; returns the slot's token (None when the route is unlimited)."""
        if not route.limited:
            return None
        token = secrets.token_hex(8)
        while True:
            wait = float(self._acquire(keys=_acquire_keys(route.name), args=self._acquire_args(route, token)))
            if wait == 0:
                return token
            if wait < 0:  # at the cap: sleep until some worker frees a slot (or a short timeout)
                self._client.blpop([keys.limit_freed(route.name)], timeout=random.uniform(0.05, FREED_WAIT_S))
            else:
                time.sleep(wait)

    def release(self, route: Route, token: str | None, outcome: str, retry_after: float | None) -> None:
        if token is None and not (route.limited and outcome == "throttled"):
            return
        args = [token or "", time.time(), outcome, retry_after or 0, route.max_in_flight, int(self.adaptive)]
        self._release(keys=_release_keys(route.name), args=args)

    def _acquire_args(self, route: Route, token: str) -> list[object]:
        slot_ttl_s = (route.timeout_s or self.default_timeout_s) + 30  # a dead worker's slot comes back after
        return [time.time(), token, slot_ttl_s, route.max_in_flight, route.rpm, int(self.adaptive)]


def _acquire_keys(name: str) -> list[str]:
    return [keys.limit_inflight(name), keys.limit_notbefore(name), keys.limit_tat(name), keys.limit_window(name)]


def _release_keys(name: str) -> list[str]:
    return [keys.limit_inflight(name), keys.limit_notbefore(name), keys.limit_window(name), keys.limit_freed(name)]
