-- The scheduler: which waiting line enters the line queue next (batchq/storage/scheduler.py).
--
-- sched  k: queue (the Celery line queue), tenants (zset tenant -> pass), urgent (zset batch ->
--           time it becomes urgent), state (hash: vclock when no tenant has work, last:<tenant>),
--           weights (hash tenant -> weight), granted (hash tenant -> lines granted), parked (zset
--           batch held back while its route is down -> its urgent time).
--        a: now, depth (the line queue's target length), batch_prefix ('batchq:batch:{'),
--           tenant_prefix ('batchq:sched:tenant:'), limit_prefix ('batchq:limit:{'), force (1: look
--           at the parked batches now, and top the queue up however little it lacks; else parked
--           batches at most every 0.1 s, and only a queue chunk short), chunk (the most lines one
--           pick grants).
--
-- Stride scheduling at two levels. Each tenant has a pass (virtual time); the tenant with the
-- least pass is served and its pass grows by 1/weight. Within the tenant each batch has its own
-- pass, grown by 1 per line. A tenant (or batch) that joins starts at the current virtual time (the
-- least pass of those with work), so it neither waits behind the backlog of the others nor takes a
-- burst for the time it was away.
-- A batch whose urgent time has passed (close to its expires_at) is served before all of them,
-- earliest first, and still charged to its tenant.
-- A batch whose lines all go to one upstream route is parked while that route is down (its breaker
-- open) and some line already waits there to probe it: its lines would only hold worker threads
-- that other routes' batches can use. It comes back at the first fill after the route closes.

local function sched_batch_key(a, b) return a.batch_prefix .. b .. '}' end
local function sched_pending_key(a, b) return a.batch_prefix .. b .. '}:pending' end
local function sched_batches_key(a, t) return a.tenant_prefix .. t .. ':batches' end

-- The virtual time: the least pass of the tenants with work, or the last one's when none has.
local function sched_vclock(k)
  local least = redis.call('ZRANGE', k.tenants, 0, 0, 'WITHSCORES')[2]
  return tonumber(least or redis.call('HGET', k.state, 'vclock') or '0')
end

-- Make batch b of tenant t eligible (idempotent).
local function sched_enroll(k, a, b, t, urgent_at)
  if not redis.call('ZSCORE', k.tenants, t) then
    local last = tonumber(redis.call('HGET', k.state, 'last:' .. t) or '0')
    redis.call('ZADD', k.tenants, math.max(sched_vclock(k), last), t)
  end
  local tb = sched_batches_key(a, t)
  if not redis.call('ZSCORE', tb, b) then
    local first = redis.call('ZRANGE', tb, 0, 0, 'WITHSCORES')
    redis.call('ZADD', tb, tonumber(first[2] or '0'), b)
  end
  redis.call('ZADD', k.urgent, urgent_at, b)
end

-- Batch b has nothing left to grant: it leaves, and its tenant too when it was its last batch.
local function sched_retire(k, a, b, t)
  local tb = sched_batches_key(a, t)
  redis.call('ZREM', tb, b)
  redis.call('ZREM', k.urgent, b)
  if redis.call('ZCARD', tb) == 0 then
    local pass = redis.call('ZSCORE', k.tenants, t)
    redis.call('ZREM', k.tenants, t)
    if pass then
      redis.call('HSET', k.state, 'last:' .. t, pass)
      if redis.call('ZCARD', k.tenants) == 0 then redis.call('HSET', k.state, 'vclock', pass) end
    end
  end
end

-- Whether a route is down and a line already waits there (and probes it).
local function sched_down(a, route)
  if not route or route == '' then return false end
  local lk = a.limit_prefix .. route .. '}'
  if not redis.call('HGET', lk .. ':health', 'open_since') then return false end
  return redis.call('ZCOUNT', lk .. ':waiters', a.now, '+inf') > 0
end

local function sched_park(k, a, b, t)
  local urgent_at = redis.call('ZSCORE', k.urgent, b) or (a.now + 86400)
  sched_retire(k, a, b, t)
  redis.call('ZADD', k.parked, urgent_at, b)
end

-- Parked batches whose route is back (or that stopped running) leave the car park. A fill folded
-- into a line's script (a.force ~= 1) looks at most every 0.1 s: during an outage every line of the
-- other routes fills. Each route is looked at once per call.
local function sched_unpark(k, a)
  if redis.call('ZCARD', k.parked) == 0 then return end
  if a.force ~= 1 then
    if a.now < tonumber(redis.call('HGET', k.state, 'unpark_at') or '0') then return end
    redis.call('HSET', k.state, 'unpark_at', a.now + 0.1)
  end
  local down = {}
  for _, b in ipairs(redis.call('ZRANGE', k.parked, 0, 99)) do
    local rec = redis.call('HMGET', sched_batch_key(a, b), 'status', 'account', 'route')
    local route = rec[3] or ''
    if down[route] == nil then down[route] = sched_down(a, route) end
    if rec[1] ~= 'in_progress' then
      redis.call('ZREM', k.parked, b)
    elseif not down[route] then
      local urgent_at = tonumber(redis.call('ZSCORE', k.parked, b))
      redis.call('ZREM', k.parked, b)
      sched_enroll(k, a, b, rec[2] or '', urgent_at)
    end
  end
end

-- Whether an urgent batch may take this grant: every fourth grant goes to the fair order even
-- then, so a batch at risk cannot hold every worker (say, waiting on its own saturated route).
local function sched_urgent_turn(k)
  return redis.call('HINCRBY', k.state, 'turn', 1) % 4 ~= 0
end

-- The next batch to serve: {batch, tenant}; batch is false when the tenant has none left.
local function sched_pick(k, a)
  local u = redis.call('ZRANGEBYSCORE', k.urgent, '-inf', a.now, 'LIMIT', 0, 1)[1]
  if u and sched_urgent_turn(k) then
    local t = redis.call('HGET', sched_batch_key(a, u), 'account') or ''
    return {u, t}
  end
  local t = redis.call('ZRANGE', k.tenants, 0, 0)[1]
  if not t then return nil end
  local b = redis.call('ZRANGE', sched_batches_key(a, t), 0, 0)[1]
  return {b or false, t}
end

local function sched_charge(k, a, b, t, n)
  local w = tonumber(redis.call('HGET', k.weights, t) or '1') or 1
  if w <= 0 then w = 1 end
  redis.call('ZADD', k.tenants, 'XX', 'INCR', n / w, t)
  redis.call('ZADD', sched_batches_key(a, t), 'XX', 'INCR', n, b)
  redis.call('HINCRBY', k.granted, t, n)
end

-- Batch b's next tasks, at most n: a list, 'park' (its one route is down) or false (the batch
-- stopped, expired, or has none left). One read of its record.
local function sched_take(a, b, n)
  local bk = sched_batch_key(a, b)
  local rec = redis.call('HMGET', bk, 'status', 'expires_at', 'route')
  if rec[1] ~= 'in_progress' or (rec[2] and a.now >= tonumber(rec[2])) then return false end
  if sched_down(a, rec[3]) then return 'park' end
  return redis.call('RPOP', bk .. ':pending', n)
end

-- Move up to n waiting lines of the next batch served into the line queue. Returns how many, or
-- 0 with 'none' (no work at all) or 'busy' (this call's budget went on dropping stale entries:
-- call again).
local function sched_grant(k, a, n)
  for _ = 1, 64 do  -- stale entries (finished, cancelled, expired or lost batches) are dropped
    local pick = sched_pick(k, a)
    if not pick then return 0, 'none' end
    local b, t = pick[1], pick[2]
    if not b then
      redis.call('ZREM', k.tenants, t)
    else
      local msgs = sched_take(a, b, n)
      if msgs == 'park' then
        sched_park(k, a, b, t)
      elseif msgs then
        redis.call('LPUSH', k.queue, unpack(msgs))  -- the first taken runs first
        sched_charge(k, a, b, t, #msgs)
        if #msgs < n or redis.call('LLEN', sched_pending_key(a, b)) == 0 then sched_retire(k, a, b, t) end
        return #msgs, 'granted'
      else
        sched_retire(k, a, b, t)
      end
    end
  end
  return 0, 'busy'
end

-- Top the line queue up to its target length. Returns how many lines were granted.
-- Each pick grants up to a.chunk lines of one batch (its tenant charged for each), and a fill
-- folded into a line's script (a.force ~= 1) waits until the queue is a.chunk short: the
-- scheduler's work per grant (the pick, the record and breaker reads, the charge) is shared by up
-- to a.chunk lines, and the queue stays between depth - chunk and depth.
local function sched_fill(k, a)
  sched_unpark(k, a)
  local want = a.depth - redis.call('LLEN', k.queue)
  if a.force ~= 1 and want < math.min(a.chunk, a.depth) then return 0 end
  local granted, rounds = 0, 0
  while granted < want and rounds < 16 + want do
    local n, outcome = sched_grant(k, a, math.min(a.chunk, want - granted))
    if outcome == 'none' then break end
    granted = granted + n
    rounds = rounds + 1
  end
  return granted
end
