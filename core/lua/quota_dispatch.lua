-- quota_dispatch.lua: choose the next job to submit and the account it goes to, and take its slot, atomically.
--
-- A job goes when its pool has room on an account it may use: an in-progress slot and a creation in the
-- pool's rolling window, the account neither cooling down nor paused and under its createTask request rate.
-- Among the pools' ready jobs that may go, the one with the lowest rank goes (its broker priority step,
-- then its age): a full pool never holds back another pool's jobs. Among the accounts, the one with the
-- most headroom in the job's pool (ties: the earlier one).
--
-- KEYS[1]                       dispatched  sorted set  member = job id, score = ms taken (recovery)
-- then per account a = 0..A-1, 3 keys:
--   cooldown (string, end ms), pause (string, why), create requests (sorted set, score = ms)
-- then per pool p = 0..P-1, 2 + 2A keys:
--   ready (sorted set, member = job id, score = rank), pins (hash job id -> the account it must run on),
--   then per account a: creations (sorted set, score = ms), leases (sorted set, score = expiry ms)
-- ARGV:
--   ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
--   ARGV[2]  lease TTL ms
--   ARGV[3]  cap on an in-progress wait hint ms (a release may come long before the lease expires)
--   ARGV[4]  wait hint for a paused account ms (pauses have no end time; waiters re-check)
--   ARGV[5]  A, ARGV[6] P
--   ARGV[7]  '' to choose from the ready sets; a job id to take a slot for that job only (pool 0, its
--            ready set and pins unused), as a submitter of one given job does
--   ARGV[8]  how many of a pool's first ready jobs are looked at (a pinned job may not go where the
--            next one could)
--   then per account a: its name, createTask requests allowed per window (0 = no limit), that window ms
--   then per pool p, per account a: in-progress limit, creations limit, creation window ms
-- Effects: drops expired leases and creations and requests that left their windows on every account
--   looked at; on success removes the job from its ready set and pins, notes it dispatched, and adds its
--   creation entry, its lease (now + TTL) and its createTask request together. A job that already holds a
--   lease in its pool on a usable account gets that account back, lease extended, with no second creation.
-- Returns:
--   {1, job, p, a, rank}    the job (of pool p, rank as it was in its ready set: a string) holds a slot on
--                           account a
--   {0, wait_ms, reason}    jobs are ready but none may go; wait_ms (> 0) until the soonest may, reason one of
--                           in_progress | creations | requests | cooldown | paused
--   {2}                     no job is ready

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep key expiries from firing early
end
local lease_ttl = tonumber(ARGV[2])
local in_progress_cap = tonumber(ARGV[3])
local paused_wait = tonumber(ARGV[4])
local A, P = tonumber(ARGV[5]), tonumber(ARGV[6])
local given = ARGV[7]
local look = tonumber(ARGV[8])

local accounts = {}
for a = 0, A - 1 do
  local acc = {
    cooldown = KEYS[2 + 3 * a], pause = KEYS[3 + 3 * a], requests = KEYS[4 + 3 * a],
    name = ARGV[9 + 3 * a], rate = tonumber(ARGV[10 + 3 * a]), rate_window = tonumber(ARGV[11 + 3 * a]),
  }
  acc.cooling = math.max(0, (tonumber(redis.call('GET', acc.cooldown)) or 0) - now)
  acc.paused = redis.call('GET', acc.pause)
  acc.request_wait = 0
  if acc.rate > 0 then
    redis.call('ZREMRANGEBYSCORE', acc.requests, '-inf', now - acc.rate_window)
    local sent = redis.call('ZCARD', acc.requests)
    if sent >= acc.rate then
      local entry = redis.call('ZRANGE', acc.requests, sent - acc.rate, sent - acc.rate, 'WITHSCORES')
      acc.request_wait = math.max(1, tonumber(entry[2]) + acc.rate_window - now)
    end
  end
  acc.usable = (not acc.paused) and acc.cooling == 0 and acc.request_wait == 0
  accounts[a + 1] = acc
end

local pool_base = 2 + 3 * A
local limits_base = 9 + 3 * A
local pools = {}
for p = 0, P - 1 do
  local k = pool_base + p * (2 + 2 * A)
  local pool = {ready = KEYS[k], pins = KEYS[k + 1], slots = {}}
  for a = 0, A - 1 do
    local l = limits_base + 3 * (p * A + a)
    pool.slots[a + 1] = {
      creations = KEYS[k + 2 + 2 * a], leases = KEYS[k + 3 + 2 * a],
      in_progress_limit = tonumber(ARGV[l]), creations_limit = tonumber(ARGV[l + 1]), window = tonumber(ARGV[l + 2]),
    }
  end
  pools[p + 1] = pool
end

-- A pool's counts on an account, read (and its logs trimmed) once per call.
local function slot_state(s)
  if not s.read then
    redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', now)
    redis.call('ZREMRANGEBYSCORE', s.creations, '-inf', now - s.window)
    s.in_progress = redis.call('ZCARD', s.leases)
    s.created = redis.call('ZCARD', s.creations)
    s.read = true
  end
  return s
end

-- Score of the entry whose departure frees one place when `count` entries fill a cap of `limit`.
local function freeing_score(key, count, limit)
  local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return tonumber(entry[2])
end

local function wait_for(acc, s)
  if acc.paused then
    return paused_wait, 'paused'
  end
  local wait, reason = 0, 'in_progress'
  if s.in_progress >= s.in_progress_limit then
    wait = math.min(in_progress_cap, freeing_score(s.leases, s.in_progress, s.in_progress_limit) - now)
  end
  if s.created >= s.creations_limit then
    local creations_wait = freeing_score(s.creations, s.created, s.creations_limit) + s.window - now
    if creations_wait > wait then
      wait, reason = creations_wait, 'creations'
    end
  end
  if acc.request_wait > wait then
    wait, reason = acc.request_wait, 'requests'
  end
  if acc.cooling >= wait then
    wait, reason = acc.cooling, 'cooldown'
  end
  return math.max(1, wait), reason
end

-- Where `job` of `pool` may go now: the account holding its lease (reused), else the one with the most
-- room; nil when none may take it.
local function place(pool, job, pin)
  for a = 1, #accounts do
    slot_state(pool.slots[a]) -- expired leases and old creations go first, on every account looked at
  end
  for a, acc in ipairs(accounts) do
    if (not pin or pin == acc.name) and redis.call('ZSCORE', pool.slots[a].leases, job) then
      if acc.usable then
        return a, true
      end
      -- a slot held on an account that cannot take it now is given up (its creation stays spent)
      redis.call('ZREM', pool.slots[a].leases, job)
      pool.slots[a].read = false
    end
  end
  local best, best_room = nil, 0
  for a, acc in ipairs(accounts) do
    if acc.usable and (not pin or pin == acc.name) then
      local s = slot_state(pool.slots[a])
      local room = math.min(s.in_progress_limit - s.in_progress, s.creations_limit - s.created)
      if room > best_room then
        best, best_room = a, room
      end
    end
  end
  return best, false
end

local chosen -- {pool index, job, rank, account, reused}
local any_ready = false
for p, pool in ipairs(pools) do
  local heads
  if given ~= '' then
    if p == 1 then
      heads = {given, '0'}
    else
      heads = {}
    end
  else
    heads = redis.call('ZRANGE', pool.ready, 0, look - 1, 'WITHSCORES')
  end
  for h = 1, #heads, 2 do
    any_ready = true
    local job, rank = heads[h], tonumber(heads[h + 1])
    if chosen and rank >= chosen[3] then
      break
    end
    local pin = false
    if given == '' then
      pin = redis.call('HGET', pool.pins, job)
    end
    local a, reused = place(pool, job, pin)
    if a then
      chosen = {p, job, rank, a, reused, heads[h + 1]}
      break
    end
  end
end

if not any_ready then
  return {2}
end

if chosen then
  local p, job, rank, a, reused = chosen[1], chosen[2], chosen[3], chosen[4], chosen[5]
  local pool, acc = pools[p], accounts[a]
  local s = pool.slots[a]
  if given == '' then
    redis.call('ZREM', pool.ready, job)
    redis.call('HDEL', pool.pins, job)
    redis.call('ZADD', KEYS[1], now, job)
  end
  if reused then
    local held = tonumber(redis.call('ZSCORE', s.leases, job))
    redis.call('ZADD', s.leases, math.max(held, now + lease_ttl), job)
  else
    local base = job .. ':' .. string.format('%d', now)
    local member, k = base, 1
    while redis.call('ZSCORE', s.creations, member) do
      k = k + 1
      member = base .. ':' .. k
    end
    redis.call('ZADD', s.creations, now, member)
    redis.call('PEXPIRE', s.creations, s.window + slack)
    redis.call('ZADD', s.leases, now + lease_ttl, job)
  end
  if acc.rate > 0 then
    local base = job .. ':' .. string.format('%d', now)
    local member, k = base, 1
    while redis.call('ZSCORE', acc.requests, member) do
      k = k + 1
      member = base .. ':' .. k
    end
    redis.call('ZADD', acc.requests, now, member)
    redis.call('PEXPIRE', acc.requests, acc.rate_window + slack)
  end
  return {1, job, p - 1, a - 1, chosen[6]}
end

-- Nothing may go: how long until the soonest pool with ready jobs may have room.
local soonest_wait, soonest_reason = nil, nil
for p, pool in ipairs(pools) do
  local has_ready = given ~= '' and p == 1 or (given == '' and redis.call('ZCARD', pool.ready) > 0)
  if has_ready then
    for a, acc in ipairs(accounts) do
      local wait, reason = wait_for(acc, slot_state(pool.slots[a]))
      if not soonest_wait or wait < soonest_wait then
        soonest_wait, soonest_reason = wait, reason
      end
    end
  end
end
return {0, soonest_wait, soonest_reason}
