"""Lua scripts: the atomic steps of a line's life and of an upstream route's limiter.

Every script here takes **named** keys and arguments. A call is made of parts (``Call``: a dict
of keys and a dict of arguments); ``Script.run`` passes every part's keys in ``KEYS`` and its
arguments in ``ARGV`` (``batchq.storage.lua``), and the Lua ``part(name)`` helper gives each step its own
``k.batch``, ``a.index``… So the line scripts can fold a limiter step and a scheduler step into
the same round trip without positional slicing. One Redis, as everywhere in batchq: not Redis
Cluster (the scheduler's step reaches the keys of the batch it picks).

The queue order itself (which waiting line enters the line queue next) lives in
``batchq.storage.scheduler`` and its ``scheduler.lua``.
"""

from __future__ import annotations

from batchq.domain import pace, throughput
from batchq.storage.lua import Call, Script
from batchq.storage.scheduler import SCHEDULER_LUA

__all__ = [
    "ACQUIRE", "BEGIN_LINE", "COMPLETE_LINE", "LOCK_HELD", "READ_RESULTS", "RELEASE", "RELEASE_LOCK", "RENEW_HELD",
    "RENEW_LOCK", "TRANSITION", "Call", "Script",
]  # fmt: skip


_SEEK = (
    "GAIN",
    "ELASTIC",
    "FAST_ELASTIC",
    "MIN_SAMPLES",
    "ROUND_SHARE",
    "HOLD_ROUNDS",
    "RISE",
    "USED",
    "CUT_EVERY_S",
    "RECOVER",
)
_CONSTANTS = {
    **{name: getattr(throughput, name) for name in (*_SEEK, "THROTTLE_CUT", "ERROR_CUT")},
    **{name: getattr(pace, name) for name in ("FIRST_WAIT_S", "MAX_WAIT_S", "MIN_PERIOD_S", "CREEP_S", "LONG_BURST")},
}


def _constants(lua: str) -> str:
    """``lua`` with each ``@NAME@`` replaced by that constant of ``batchq.domain.throughput`` or
    ``batchq.domain.pace`` (``repr`` of a float reads back in Lua as the same double)."""
    for name, value in _CONSTANTS.items():
        lua = lua.replace(f"@{name}@", repr(value))
    assert "@" not in lua, "a constant of a rule has no value"
    return lua


# Positional (a plain registered script: its status list has a variable length).
# KEYS: batch, active, stats, [usage of the batch's account, on terminal moves].
# ARGV: batch_id, target, stamp field ('' for none), now, terminal (0/1),
# n, source statuses x n, then field/value pairs to set.
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

# line  k: batch, done, leases.  a: index, lease_until, now.
# Returns the verdict (batchq.domain.scheduling.Verdict): go | done | leased | stop | expired.
# 'leased': another worker runs the line now (a redelivered message); it is not sent twice. A lease
# equal to a.lease_until to the bit is this very call's, run again by the client after a timeout
# (its reply was lost, not its effect): it goes.
_BEGIN_LINE_FN = """
local function begin_line(k, a)
  local b = redis.call('HMGET', k.batch, 'status', 'expires_at')
  if b[1] ~= 'in_progress' then return 'stop' end
  if redis.call('GETBIT', k.done, a.index) == 1 then return 'done' end
  local held = redis.call('HGET', k.leases, a.index)
  if held and tonumber(held) > a.now and tonumber(held) ~= a.lease_until then return 'leased' end
  if b[2] and a.now >= tonumber(b[2]) then return 'expired' end
  redis.call('HSET', k.leases, a.index, a.lease_until)
  return 'go'
end
"""

# line  k: leases.  a: indices (a list), lease_until.
# The worker's heartbeat: renews the leases a live worker holds. A line completed (or re-sent) meanwhile has no
# lease left and gets none back. Returns how many leases were renewed.
RENEW_HELD = """
local k, a = part('line')
local renewed = 0
for _, index in ipairs(a.indices) do
  if redis.call('HEXISTS', k.leases, index) == 1 then
    redis.call('HSET', k.leases, index, a.lease_until)
    renewed = renewed + 1
  end
end
return renewed
"""

# lock  k: lock.  a: token, ttl_ms.
# The worker's heartbeat: a batch's lock (a submit or a finalize running) lives on while its holder
# beats; a lock taken since by another holder (this one's ran out) is left alone. Returns 1 or 0.
RENEW_LOCK = """
local k, a = part('lock')
if redis.call('GET', k.lock) == a.token then return redis.call('PEXPIRE', k.lock, a.ttl_ms) end
return 0
"""

# lock  k: lock.  a: token.
# Gives a batch lock back only if it is still this holder's (compare-and-delete). Returns 1 or 0.
RELEASE_LOCK = """
local k, a = part('lock')
if redis.call('GET', k.lock) == a.token then return redis.call('DEL', k.lock) end
return 0
"""

# lock  k: lock, batch.  a: token, terminal (the final statuses).
# The fence of a finalize before it puts a file in place or moves the status: its lock is still
# its own (it did not run out while the finalize stalled) and the batch has not ended (another
# finalize did not finish it meanwhile). Returns 1 or 0.
LOCK_HELD = """
local k, a = part('lock')
if redis.call('GET', k.lock) ~= a.token then return 0 end
local status = redis.call('HGET', k.batch, 'status')
if not status then return 0 end
for _, final in ipairs(a.terminal) do
  if status == final then return 0 end
end
return 1
"""

# line  k: batch, done, results, order, leases, stats, tenant_lines.
#       a: index, ok (1/0), data, input_tokens, output_tokens, total_tokens, now, ttl, ttl_every.
# Stores a line's result once, and appends its index to the batch's order list (what the results
# feed and the output files follow). The working keys' TTL is renewed at most once per
# a.ttl_every seconds per batch (field ttl_at), not by every line: three EXPIREs a line saved.
# Returns {accepted (1/0), completed + failed, total}.
_COMPLETE_LINE_FN = """
local function complete_line(k, a)
  local b = redis.call('HMGET', k.batch, 'status', 'account', 'completed', 'failed', 'total', 'ttl_at')
  local status = b[1]
  redis.call('HDEL', k.leases, a.index)
  if (not status) or status == 'completed' or status == 'failed' or status == 'expired' or status == 'cancelled' then
    return {0, 0, 0}
  end
  if redis.call('SETBIT', k.done, a.index, 1) == 1 then return {0, 0, 0} end
  local prefix = 'e'
  if a.ok == 1 then prefix = 'o' end
  redis.call('HSET', k.results, a.index, prefix .. a.data)
  redis.call('RPUSH', k.order, a.index)
  local done
  if a.ok == 1 then
    done = redis.call('HINCRBY', k.batch, 'completed', 1) + tonumber(b[4] or 0)
    redis.call('HINCRBY', k.batch, 'usage_input', a.input_tokens)
    redis.call('HINCRBY', k.batch, 'usage_output', a.output_tokens)
    redis.call('HINCRBY', k.batch, 'usage_total', a.total_tokens)
    redis.call('HINCRBY', k.stats, 'lines_completed', 1)
  else
    done = redis.call('HINCRBY', k.batch, 'failed', 1) + tonumber(b[3] or 0)
    redis.call('HINCRBY', k.stats, 'lines_failed', 1)
  end
  if b[2] then redis.call('HINCRBY', k.tenant_lines, b[2], 1) end
  if a.now < tonumber(b[6] or 0) + a.ttl_every then
    redis.call('HSET', k.batch, 'progress_at', a.now)
  else
    redis.call('HSET', k.batch, 'progress_at', a.now, 'ttl_at', a.now)
    redis.call('EXPIRE', k.done, a.ttl)
    redis.call('EXPIRE', k.results, a.ttl)
    redis.call('EXPIRE', k.order, a.ttl)
  end
  return {1, done, tonumber(b[5] or 0)}
end
"""

# The limiter of one upstream route (batchq.storage.limits), with its circuit breaker.
# slot  k: inflight, notbefore, tat, window, health (hash: open_since, failures, opened_total),
#          probe (the one probe allowed while open), waiters (lines waiting for an open route).
#       a: now, token, ttl, cap, rpm, adaptive (0/1), w0 (the window before any feedback), breaker
#          (0/1), probe_ms, waiters (how many lines may wait for an open route in worker threads;
#          0: this line waits whatever their number), waits (0: only asking, folded into BEGIN_LINE:
#          an open route answers 'o' and registers no waiter; the line asks again to wait).
# The GCRA spaces requests by the route's rpm, or by the pace its 429s taught it (the slower).
# Returns "0" (acquired), "-1" (at the cap: wait for a freed slot), seconds to wait (string),
# "o<seconds>:<open_since>" (the route is down: wait for the next probe) or "d" (the route is down
# and enough lines wait for it: stand aside, back to the scheduler).
_ACQUIRE_FN = _constants(
    """
local function acquire(k, a)
  local now = a.now
  if a.breaker == 1 then
    local since = redis.call('HGET', k.health, 'open_since')
    if since and not redis.call('SET', k.probe, '1', 'NX', 'PX', a.probe_ms) then
      if a.waits == 1 then
        redis.call('ZREMRANGEBYSCORE', k.waiters, '-inf', now)
        if a.waiters > 0 and not redis.call('ZSCORE', k.waiters, a.token)
            and redis.call('ZCARD', k.waiters) >= a.waiters then
          return 'd'
        end
        redis.call('ZADD', k.waiters, now + math.max(5, 3 * a.probe_ms / 1000), a.token)
      end
      local left = math.max(50, redis.call('PTTL', k.probe))
      return 'o' .. tostring(left / 1000) .. ':' .. since
    end
    redis.call('ZREM', k.waiters, a.token)
  end
  local nb = tonumber(redis.call('GET', k.notbefore) or '0')
  if nb > now then return tostring(nb - now) end
  local h = redis.call('HMGET', k.window, 'w', 'r_rate', 'r_last')
  if a.cap > 0 then
    redis.call('ZREMRANGEBYSCORE', k.inflight, '-inf', now)
    local limit = a.cap
    if a.adaptive == 1 then
      local w = tonumber(h[1] or a.w0)
      limit = math.max(1, math.min(a.cap, math.floor(w)))
    end
    if redis.call('ZCARD', k.inflight) >= limit then return '-1' end
  end
  local interval = 0
  if a.rpm > 0 then interval = 60.0 / a.rpm end
  local rate = tonumber(h[2] or '0')
  if rate > 0 then  -- the pace its 429s taught the route (batchq.domain.pace.Pace.rate_at)
    rate = rate * math.min(2, 1 + math.max(0, now - tonumber(h[3])) / @CREEP_S@)
    interval = math.max(interval, 1 / rate)
  end
  if interval > 0 then
    local tat = tonumber(redis.call('GET', k.tat) or '0')
    if tat < now then tat = now end
    if tat - now > 1.0 then return tostring(tat - now - 1.0) end
    redis.call('SET', k.tat, tostring(tat + interval), 'EX', 3600)
  end
  if a.cap > 0 then redis.call('ZADD', k.inflight, now + a.ttl, a.token) end
  return '0'
end
"""
)

# slot  k: inflight, notbefore, window, freed, health.
#       a: token, now, outcome (ok|throttled|error|down), retry_after, cap, mode (aimd|gradient|fixed),
#          w0, latency (seconds, per output token when known; 0: none), tolerance, min_cut (the
#          smallest factor one back-off multiplies the window by), failures (down
#          outcomes in a row that open the breaker; 0: no breaker).
# Returns the route's state after it and what changed: "open:opened", "open:", "closed:closed", "closed:".
_HEALTH_FN = """
local function record_health(k, a)
  if a.failures <= 0 then return 'closed:' end
  if a.outcome == 'down' then
    local n = redis.call('HINCRBY', k.health, 'failures', 1)
    if redis.call('HGET', k.health, 'open_since') then return 'open:' end
    if n < a.failures then return 'closed:' end
    redis.call('HSET', k.health, 'open_since', a.now)
    redis.call('HINCRBY', k.health, 'opened_total', 1)
    return 'open:opened'
  end
  local f = redis.call('HGET', k.health, 'failures')
  if (not f) or f == '0' then return 'closed:' end
  redis.call('HSET', k.health, 'failures', 0)
  if redis.call('HDEL', k.health, 'open_since') == 1 then
    redis.call('HSET', k.health, 'closed_at', a.now)
    return 'closed:closed'
  end
  return 'closed:'
end
"""

# The gradient window (mode gradient): the route's window w follows the latency the requests see.
# This is batchq.domain.gradient.GradientLimit.update, atomically on the route's shared hash (its
# docstring explains the rule; test_gradient_parity keeps the two equal). a.smoothing, a.drift and
# a.follow are that module's constants. So batch traffic keeps the upstream's queue short: what
# interactive users of the same server wait behind.
_GRADIENT_FN = """
local function gradient(k, a)
  local h = redis.call('HMGET', k.window, 'w', 'base', 'short', 'cut', 'at', 'ss')
  local x = a.latency
  local w = tonumber(h[1] or a.w0)
  local short = tonumber(h[3] or x)
  short = short + a.smoothing * (x - short)
  local at = tonumber(h[5] or a.now)
  local base = tonumber(h[2] or short) * (1 + a.drift * math.max(0, a.now - at))
  if short < base then base = base + a.follow * (short - base) end
  local cut = tonumber(h[4] or '0')
  local ss = h[6] ~= '0'
  if short > a.tolerance * base then
    if a.now - cut >= short then
      local target = w * math.max(a.min_cut, a.tolerance * base / short)
      if target < a.w0 then
        -- even a few requests see this latency: it is the upstream's own (slower requests, another
        -- model), not a queue of ours. Learn it as the new unloaded latency instead of starving.
        base = short / a.tolerance
        target = a.w0
      end
      w = math.max(1, target)
      cut = a.now
      ss = false
    end
  elseif ss then
    w = math.min(a.cap, w + 1)
  elseif short <= (1 + (a.tolerance - 1) * a.band) * base then
    w = math.min(a.cap, w + 1 / w)
  end
  local ssv = '0'
  if ss then ssv = '1' end
  redis.call('HSET', k.window, 'w', tostring(w), 'base', tostring(base), 'short', tostring(short),
    'cut', tostring(cut), 'at', tostring(a.now), 'ss', ssv)
end
"""


# The throughput-seeking window (mode throughput, the default): batchq.domain.throughput's
# SeekLimit.answer and back_off, atomically on the route's shared hash (its docstring explains the
# rule; test_seek_parity keeps the two equal). The module's constants are written into the text
# (``_constants``), so no call carries them. The state lives in the window hash beside ``w``
# (which ACQUIRE reads), its fields named s_*.
_SEEK_FN = _constants(
    """
local SEEK_FIELDS = {'base', 'phase', 'fast', 'lower', 'skip', 'mark', 'count', 'total', 'top', 'ref_x', 'ref_l',
  'ref_top', 'held_l', 'low_l', 'rounds', 'ceiling', 'cut'}
local function seek_load(k, a)
  local names = {'w'}
  for i, f in ipairs(SEEK_FIELDS) do names[i + 1] = 's_' .. f end
  local h = redis.call('HMGET', k.window, unpack(names))
  if not h[2] then
    return {w = a.w0, base = a.w0, phase = 'hold', fast = true, lower = false, skip = 0, mark = 0, count = 0,
      total = 0, top = 0, ref_x = 0, ref_l = 0, ref_top = 0, held_l = 0, low_l = 0, rounds = 0, ceiling = 0, cut = 0}
  end
  local s = {w = tonumber(h[1]) or a.w0}
  for i, f in ipairs(SEEK_FIELDS) do s[f] = h[i + 1] end
  for _, f in ipairs({'base', 'skip', 'mark', 'count', 'total', 'top', 'ref_x', 'ref_l', 'ref_top', 'held_l', 'low_l',
      'rounds', 'ceiling',
      'cut'}) do s[f] = tonumber(s[f]) end
  s.fast = s.fast == '1'
  s.lower = s.lower == '1'
  return s
end
local function seek_save(k, s)
  local flat = {'w', tostring(s.w)}
  for _, f in ipairs(SEEK_FIELDS) do
    local v = s[f]
    if v == true then v = '1' elseif v == false then v = '0' else v = tostring(v) end
    flat[#flat + 1] = 's_' .. f
    flat[#flat + 1] = v
  end
  redis.call('HSET', k.window, unpack(flat))
end
local function seek_elasticity(x1, x0, n1, n0)
  if x1 <= 0 or x0 <= 0 or n1 <= 0 or n0 <= 0 or n1 == n0 then return 0 end
  return math.log(x1 / x0) / math.log(n1 / n0)
end
local function seek_round(s)
  s.skip = s.w
  s.mark = 0
  s.count = 0
  s.total = 0
  s.top = 0
end
local function seek_hold(s, base)
  s.w = base
  s.base = base
  s.phase = 'hold'
  s.rounds = 0
  seek_round(s)
end
local function seek_up(s, a)
  local step = math.max(s.base + 1, s.base * @GAIN@)
  if s.fast then step = 2 * s.base end
  s.w = math.min(a.cap, step)
  s.phase = 'up'
  seek_round(s)
end
local function seek_down(s)
  local step = s.base / @GAIN@
  if s.fast then step = s.base / 2 end
  s.w = math.max(1, step)
  s.phase = 'down'
  seek_round(s)
end
local function seek_held(s, a, rate, latency)
  if s.held_l <= 0 then s.held_l = latency end
  s.ref_x = rate
  s.ref_l = latency
  s.ref_top = s.top
  s.rounds = s.rounds + 1
  if latency > @RISE@ * s.held_l and s.base > 1 then
    s.fast = false
    return seek_down(s)
  end
  local ready = s.fast or s.rounds >= @HOLD_ROUNDS@
  local queued = s.base >= a.cap and latency > @RISE@ * s.low_l
  if ready and (s.lower or queued) and s.base > 1 then return seek_down(s) end
  if ready and s.base < a.cap and s.top >= @USED@ * s.base then return seek_up(s, a) end
  s.fast = s.fast and s.base < a.cap
  seek_round(s)
end
-- a kept probe: its window becomes the base, and its round the reference the next probe is judged by
local function seek_accept(s, rate, latency)
  s.base = s.w
  s.ref_x = rate
  s.ref_l = latency
  s.ref_top = s.top
  s.held_l = latency
end
local function seek_probed_up(s, a, rate, latency)
  local n1, n0 = math.min(s.w, s.top), math.min(s.base, s.ref_top)
  local gain = 0
  if n1 > n0 then gain = seek_elasticity(rate, s.ref_x, n1, n0) end
  local elastic = @ELASTIC@
  if s.fast then elastic = @FAST_ELASTIC@ end
  if gain < elastic then
    s.lower = true
    return seek_hold(s, s.base)
  end
  seek_accept(s, rate, latency)
  s.lower = false
  if s.base >= a.cap then
    s.fast = false
    return seek_hold(s, s.base)
  end
  seek_up(s, a)
end
local function seek_probed_down(s, rate, latency)
  local n1, n0 = math.min(s.base, s.ref_top), math.min(s.w, s.top)
  local loss = 1
  if n1 > n0 then loss = seek_elasticity(s.ref_x, rate, n1, n0) end
  local elastic = @ELASTIC@
  if s.fast then elastic = @FAST_ELASTIC@ end
  if loss >= elastic then
    s.held_l = s.ref_l
    s.lower = false
    s.fast = false
    return seek_hold(s, s.base)
  end
  seek_accept(s, rate, latency)
  if s.base > 1 then return seek_down(s) end
  seek_hold(s, s.base)
end
-- a: now, cap, w0, seconds (the answer's latency); n: requests in flight when it came back.
local function seek_answer(k, a, n)
  local s = seek_load(k, a)
  s.top = math.max(s.top, n)
  if s.ceiling > 0 then  -- recovering from a cut: one more per answer, back to where it was
    local w = math.min(s.ceiling, s.w + 1)
    if w >= s.ceiling then
      s.ceiling = 0
      seek_hold(s, w)
    else
      s.w = w
      s.base = w
    end
  elseif s.skip > 0 or s.mark <= 0 then
    s.skip = s.skip - 1
    s.mark = a.now
  else
    s.count = s.count + 1
    s.total = s.total + a.seconds
    if s.count >= math.max(@MIN_SAMPLES@, @ROUND_SHARE@ * s.w) and a.now > s.mark then
      local rate, latency = s.count / (a.now - s.mark), s.total / s.count
      if s.low_l > 0 then s.low_l = math.min(s.low_l, latency) else s.low_l = latency end
      if s.phase == 'up' then seek_probed_up(s, a, rate, latency)
      elseif s.phase == 'down' then seek_probed_down(s, rate, latency)
      else seek_held(s, a, rate, latency) end
    end
  end
  seek_save(k, s)
end
local function seek_back_off(k, a, factor)
  local s = seek_load(k, a)
  if a.now - s.cut < @CUT_EVERY_S@ then return end
  local w = math.max(1, s.w * factor)
  s.fast = false
  s.ceiling = math.max(w, @RECOVER@ * s.base)
  s.cut = a.now
  seek_hold(s, w)
  seek_save(k, s)
end
"""
)

# What a route learns from its 429s (batchq.domain.pace: Pace.throttled, Pace.answered; its
# docstring explains the rule; test_pace_parity keeps the two equal), in the window hash (r_*).
# a: now, sent_at (when the throttled request was sent), retry_after (the answer's hint; 0: none).
_PACE_FN = _constants(
    """
local function pace_throttled(k, a)
  local h = redis.call('HMGET', k.window, 'r_rate', 'r_since', 'r_answers', 'r_wait', 'r_last', 'r_streak')
  local rate, since, answers = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0')
  local wait, last, streak = tonumber(h[4] or '0'), tonumber(h[5] or '0'), tonumber(h[6] or '0')
  if a.sent_at < last then return end  -- the same burst: already learnt from
  local burst = answers > 0 or since == 0
  if burst and since > 0 and streak >= @LONG_BURST@ and a.now - since >= @MIN_PERIOD_S@ then
    rate = answers / (a.now - since)
  end
  if a.retry_after <= 0 then
    if burst or wait <= 0 then wait = @FIRST_WAIT_S@ else wait = math.min(@MAX_WAIT_S@, 2 * wait) end
  end
  if burst then
    since = a.now
    streak = 1
  else
    streak = streak + 1
  end
  redis.call('HSET', k.window, 'r_rate', tostring(rate), 'r_since', tostring(since), 'r_answers', '0',
    'r_wait', tostring(wait), 'r_last', tostring(a.now), 'r_streak', tostring(streak))
  local hold = a.retry_after
  if hold <= 0 then hold = wait end
  local nb = tonumber(redis.call('GET', k.notbefore) or '0')
  if a.now + hold > nb then redis.call('SET', k.notbefore, tostring(a.now + hold), 'EX', math.ceil(hold) + 1) end
end
local function pace_answered(k)
  local since = redis.call('HGET', k.window, 'r_since')
  if since and since ~= '0' then redis.call('HINCRBY', k.window, 'r_answers', 1) end
end
"""
)

_RELEASE_FN = (
    _HEALTH_FN
    + _GRADIENT_FN
    + _SEEK_FN
    + _PACE_FN
    + _constants(
        """
local function release(k, a)
  local now = a.now
  local cap = a.cap
  local seeks = a.mode == 'throughput' and cap > 0
  local n = 0
  if seeks and a.outcome == 'ok' then n = redis.call('ZCARD', k.inflight) end
  if redis.call('ZREM', k.inflight, a.token) == 1 and cap > 0 then
    redis.call('LPUSH', k.freed, '1')  -- wake one worker waiting for a slot
    redis.call('LTRIM', k.freed, 0, cap - 1)
    redis.call('EXPIRE', k.freed, 60)
  end
  if a.outcome == 'throttled' then
    pace_throttled(k, a)
    if seeks then
      seek_back_off(k, a, @THROTTLE_CUT@)
    elseif a.mode ~= 'fixed' and cap > 0 then
      local w = tonumber(redis.call('HGET', k.window, 'w') or a.w0)
      local halved = tonumber(redis.call('HGET', k.window, 'halved') or '0')
      if now - halved >= 1.0 then
        redis.call('HSET', k.window, 'w', tostring(math.max(1, w / 2)), 'halved', tostring(now), 'ss', '0')
      end
    end
  elseif seeks and a.outcome == 'ok' and a.seconds > 0 then
    seek_answer(k, a, n)
  elseif seeks and a.outcome == 'error' then
    seek_back_off(k, a, @ERROR_CUT@)
  elseif a.outcome == 'ok' and a.mode == 'gradient' and cap > 0 and a.latency > 0 then
    gradient(k, a)
  elseif a.outcome == 'ok' and a.mode == 'aimd' and cap > 0 then
    local w = tonumber(redis.call('HGET', k.window, 'w') or a.w0)
    if w < cap then redis.call('HSET', k.window, 'w', tostring(math.min(cap, w + 1 / w))) end
  end
  if a.outcome == 'ok' then pace_answered(k) end
  if a.outcome ~= 'ok' then redis.call('HINCRBY', k.health, a.outcome, 1) end  -- 429s and errors, per route
  return record_health(k, a)
end
"""
    )
)

# Parts: line (BEGIN_LINE's), optional slot (ACQUIRE's: taken only if the line may run),
# optional sched (the scheduler's fill: every delivered task lets the next granted line in).
# Returns {verdict, acquire reply ('' when no slot was asked for)}.
BEGIN_LINE = (
    _BEGIN_LINE_FN
    + _ACQUIRE_FN
    + SCHEDULER_LUA
    + """
local verdict = begin_line(part('line'))
local sk, sa = part('sched')
if sk then sched_fill(sk, sa) end
local slot = ''
local ak, aa = part('slot')
if ak and verdict == 'go' then slot = acquire(ak, aa) end
return {verdict, slot}
"""
)

# Parts: line (COMPLETE_LINE's), optional slot (RELEASE's: the last attempt's slot given back).
# Returns COMPLETE_LINE's reply and, fourth, RELEASE's ('' without a slot part).
COMPLETE_LINE = (
    _COMPLETE_LINE_FN
    + _RELEASE_FN
    + """
local health = ''
local rk, ra = part('slot')
if rk then health = release(rk, ra) end
local reply = complete_line(part('line'))
reply[4] = health
return reply
"""
)

# feed  k: batch, order, results.  a: start, count, max_bytes.
# The result lines stored so far, from position ``start`` of the order list: at most ``count`` of
# them and, after the first, no more than ``max_bytes`` in all. Read in one step, so a batch that
# finalizes meanwhile (its working keys dropped) is seen either before or after, never half-way.
# Returns {status ('' when the batch is gone), lines stored so far, b"o"/b"e" + line, ...}.
READ_RESULTS = """
local k, a = part('feed')
local reply = {redis.call('HGET', k.batch, 'status') or '', redis.call('LLEN', k.order)}
if a.start >= reply[2] or a.count <= 0 then return reply end
local used = 0
for _, index in ipairs(redis.call('LRANGE', k.order, a.start, a.start + a.count - 1)) do
  local value = redis.call('HGET', k.results, index)
  if not value then break end
  if used > 0 and used + #value > a.max_bytes then break end
  used = used + #value
  reply[#reply + 1] = value
end
return reply
"""

ACQUIRE = _ACQUIRE_FN + "return acquire(part('slot'))"
RELEASE = _RELEASE_FN + "return release(part('slot'))"
