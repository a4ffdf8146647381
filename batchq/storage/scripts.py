"""Lua scripts: the atomic steps of a batch's life. Each runs on one batch's keys only."""

from __future__ import annotations

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
# Returns {verdict, input_file_id, endpoint}; verdict is go | done | leased | stop | expired.
# 'leased': another worker runs the line now (a redelivered message); it is not sent twice.
BEGIN_LINE = """
local b = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'input_file_id', 'endpoint')
if b[1] ~= 'in_progress' then return {'stop', '', ''} end
if redis.call('GETBIT', KEYS[2], ARGV[1]) == 1 then return {'done', '', ''} end
local held = redis.call('HGET', KEYS[3], ARGV[1])
if held and tonumber(held) > tonumber(ARGV[3]) then return {'leased', '', ''} end
if b[2] and tonumber(ARGV[3]) >= tonumber(b[2]) then return {'expired', '', ''} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return {'go', b[3], b[4]}
"""

# KEYS: batch, done, results, leases, stats. ARGV: index, ok (1/0), data, in, out, total tokens, now, ttl.
# Stores a line's result once. Returns {accepted (1/0), completed + failed, total}.
COMPLETE_LINE = """
local status = redis.call('HGET', KEYS[1], 'status')
redis.call('HDEL', KEYS[4], ARGV[1])
if (not status) or status == 'completed' or status == 'failed' or status == 'expired' or status == 'cancelled' then
  return {0, 0, 0}
end
if redis.call('SETBIT', KEYS[2], ARGV[1], 1) == 1 then return {0, 0, 0} end
local prefix = 'e'
if ARGV[2] == '1' then prefix = 'o' end
redis.call('HSET', KEYS[3], ARGV[1], prefix .. ARGV[3])
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
  redis.call('HINCRBY', KEYS[1], 'usage_input', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'usage_output', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'usage_total', ARGV[6])
  redis.call('HINCRBY', KEYS[5], 'lines_completed', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HINCRBY', KEYS[5], 'lines_failed', 1)
end
redis.call('HSET', KEYS[1], 'progress_at', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[8])
local c = redis.call('HMGET', KEYS[1], 'completed', 'failed', 'total')
return {1, tonumber(c[1] or 0) + tonumber(c[2] or 0), tonumber(c[3] or 0)}
"""
