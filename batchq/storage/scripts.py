"""Lua scripts: the atomic steps of a batch's life and of an upstream route's limiter.

The batch scripts touch one batch's keys only; the combined line scripts also take or give back a
limiter slot in the same round trip (one Redis, as everywhere in batchq: not Redis Cluster).
"""

from __future__ import annotations

from typing import Any, NamedTuple

# KEYS: batch, active-set, stats, [usage of the batch's account, on terminal moves].
# ARGV: batch_id, target, stamp field ('' for none), now, terminal (0/1), n, source statuses x n,
# then field/value pairs to set.
TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local n = tonumber(ARGV[6])
local allowed = false
for i = 1, n do
  if ARGV[6 + i] == status then allowed = true end
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[4]) end
for i = 7 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[5] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'batches_' .. ARGV[2], 1)
  local reserved = redis.call('HGET', KEYS[1], 'reserved_lines')
  if reserved and KEYS[4] then
    redis.call('HINCRBY', KEYS[4], 'batches', -1)
    redis.call('HINCRBY', KEYS[4], 'lines', -tonumber(reserved))
  end
end
return 1
"""

# KEYS: batch, done, leases. ARGV: index, lease_until, now.
# Returns verdict: go | done | leased | stop | expired.
# 'leased': another worker runs the line now (a redelivered message); it is not sent twice.
# Every delivered task counts itself out of the batch's 'queued' tasks (the watchdog reads it).
_BEGIN_LINE_FN = """
local function begin_line(K, A)
  local b = redis.call('HMGET', K[1], 'status', 'expires_at')
  if b[1] then redis.call('HINCRBY', K[1], 'queued', -1) end
  if b[1] ~= 'in_progress' then return 'stop' end
  if redis.call('GETBIT', K[2], A[1]) == 1 then return 'done' end
  local held = redis.call('HGET', K[3], A[1])
  if held and tonumber(held) > tonumber(A[3]) then return 'leased' end
  if b[2] and tonumber(A[3]) >= tonumber(b[2]) then return 'expired' end
  redis.call('HSET', K[3], A[1], A[2])
  return 'go'
end
"""

# KEYS: batch, done, results, leases, stats, [pending, queue]. ARGV: index, ok (1/0), data, in, out,
# total tokens, now, ttl. Stores a line's result once. Returns {accepted (1/0), completed + failed, total}.
# With pending and queue, a stored line of a running batch moves its batch's next task into the queue.
_COMPLETE_LINE_FN = """
local function complete_line(K, A)
  local status = redis.call('HGET', K[1], 'status')
  redis.call('HDEL', K[4], A[1])
  if (not status) or status == 'completed' or status == 'failed' or status == 'expired' or status == 'cancelled' then
    return {0, 0, 0}
  end
  if redis.call('SETBIT', K[2], A[1], 1) == 1 then return {0, 0, 0} end
  local prefix = 'e'
  if A[2] == '1' then prefix = 'o' end
  redis.call('HSET', K[3], A[1], prefix .. A[3])
  if A[2] == '1' then
    redis.call('HINCRBY', K[1], 'completed', 1)
    redis.call('HINCRBY', K[1], 'usage_input', A[4])
    redis.call('HINCRBY', K[1], 'usage_output', A[5])
    redis.call('HINCRBY', K[1], 'usage_total', A[6])
    redis.call('HINCRBY', K[5], 'lines_completed', 1)
  else
    redis.call('HINCRBY', K[1], 'failed', 1)
    redis.call('HINCRBY', K[5], 'lines_failed', 1)
  end
  if K[6] and status == 'in_progress' and redis.call('RPOPLPUSH', K[6], K[7]) then
    redis.call('HINCRBY', K[1], 'queued', 1)
  end
  redis.call('HSET', K[1], 'progress_at', A[7])
  redis.call('EXPIRE', K[2], A[8])
  redis.call('EXPIRE', K[3], A[8])
  local c = redis.call('HMGET', K[1], 'completed', 'failed', 'total')
  return {1, tonumber(c[1] or 0) + tonumber(c[2] or 0), tonumber(c[3] or 0)}
end
"""

# The limiter of one upstream route (batchq.storage.limits).
# KEYS: inflight, notbefore, tat, window. ARGV: now, token, ttl, cap, rpm, adaptive.
# Returns "0" (acquired), "-1" (at the cap: wait for a freed slot) or seconds to wait (string).
_ACQUIRE_FN = """
local function acquire(K, A)
  local now = tonumber(A[1])
  local nb = tonumber(redis.call('GET', K[2]) or '0')
  if nb > now then return tostring(nb - now) end
  local cap = tonumber(A[4])
  if cap > 0 then
    redis.call('ZREMRANGEBYSCORE', K[1], '-inf', now)
    local limit = cap
    if A[6] == '1' then
      local w = tonumber(redis.call('HGET', K[4], 'w') or A[4])
      limit = math.max(1, math.min(cap, math.floor(w)))
    end
    if redis.call('ZCARD', K[1]) >= limit then return '-1' end
  end
  local rpm = tonumber(A[5])
  if rpm > 0 then
    local interval = 60.0 / rpm
    local tat = tonumber(redis.call('GET', K[3]) or '0')
    if tat < now then tat = now end
    if tat - now > 1.0 then return tostring(tat - now - 1.0) end
    redis.call('SET', K[3], tostring(tat + interval), 'EX', 3600)
  end
  if cap > 0 then redis.call('ZADD', K[1], now + tonumber(A[3]), A[2]) end
  return '0'
end
"""

# KEYS: inflight, notbefore, window, freed. ARGV: token, now, outcome (ok|throttled|error), retry_after, cap, adaptive.
_RELEASE_FN = """
local function release(K, A)
  local now = tonumber(A[2])
  local cap = tonumber(A[5])
  if redis.call('ZREM', K[1], A[1]) == 1 and cap > 0 then
    redis.call('LPUSH', K[4], '1')  -- wake one worker waiting for a slot
    redis.call('LTRIM', K[4], 0, cap - 1)
    redis.call('EXPIRE', K[4], 60)
  end
  if A[3] == 'throttled' then
    local wait = tonumber(A[4])
    if wait > 0 then
      local nb = tonumber(redis.call('GET', K[2]) or '0')
      if now + wait > nb then redis.call('SET', K[2], tostring(now + wait), 'EX', math.ceil(wait) + 1) end
    end
    if A[6] == '1' and cap > 0 then
      local w = tonumber(redis.call('HGET', K[3], 'w') or cap)
      local at = tonumber(redis.call('HGET', K[3], 'at') or '0')
      if now - at >= 1.0 then
        redis.call('HSET', K[3], 'w', tostring(math.max(1, w / 2)), 'at', tostring(now))
      end
    end
  elseif A[3] == 'ok' and A[6] == '1' and cap > 0 then
    local w = tonumber(redis.call('HGET', K[3], 'w') or cap)
    if w < cap then redis.call('HSET', K[3], 'w', tostring(math.min(cap, w + 1 / w))) end
  end
  return 1
end
"""

# KEYS: pending, queue, batch. ARGV: count. Moves up to count waiting tasks into the queue and
# counts them in; returns how many moved.
RELEASE_PENDING = """
local moved = 0
for _ = 1, tonumber(ARGV[1]) do
  if not redis.call('RPOPLPUSH', KEYS[1], KEYS[2]) then break end
  moved = moved + 1
end
if moved > 0 then redis.call('HINCRBY', KEYS[3], 'queued', moved) end
return moved
"""

_SLICE_FN = """
local function slice(t, first, last)
  local out = {}
  for i = first, last do out[#out + 1] = t[i] end
  return out
end
"""

BEGIN_LINE = _BEGIN_LINE_FN + "return begin_line(KEYS, ARGV)"
COMPLETE_LINE = _COMPLETE_LINE_FN + "return complete_line(KEYS, ARGV)"
ACQUIRE = _ACQUIRE_FN + "return acquire(KEYS, ARGV)"
RELEASE = _RELEASE_FN + "return release(KEYS, ARGV)"

# One round trip where there were two: begin the line and, only if it may run, take a slot for
# its first attempt. KEYS: BEGIN_LINE's 3, then ACQUIRE's 4; ARGV: BEGIN_LINE's 3, then ACQUIRE's 6.
# Returns {verdict, acquire reply ('' when the line may not run)}.
BEGIN_LINE_ACQUIRE = (
    _SLICE_FN
    + _BEGIN_LINE_FN
    + _ACQUIRE_FN
    + """
local verdict = begin_line(slice(KEYS, 1, 3), slice(ARGV, 1, 3))
if verdict ~= 'go' then return {verdict, ''} end
return {verdict, acquire(slice(KEYS, 4, 7), slice(ARGV, 4, 9))}
"""
)

# Give back the last attempt's slot and store the line's result, in one round trip.
# KEYS: COMPLETE_LINE's 7, then RELEASE's 4; ARGV: COMPLETE_LINE's 8, then RELEASE's 6.
COMPLETE_LINE_RELEASE = (
    _SLICE_FN
    + _COMPLETE_LINE_FN
    + _RELEASE_FN
    + """
release(slice(KEYS, 8, 11), slice(ARGV, 9, 14))
return complete_line(slice(KEYS, 1, 7), slice(ARGV, 1, 8))
"""
)


class Call(NamedTuple):
    """The keys and arguments of one script call, for scripts that combine several steps."""

    keys: list[str]
    args: list[Any]
