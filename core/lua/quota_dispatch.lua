-- quota_dispatch.lua: choose the next job to submit and the account it goes to, and take its slot, atomically.
--
-- A job goes when its pool has room on an account it may use: an in-progress slot and a creation in the
-- pool's rolling window, the account neither cooling down nor paused and under its createTask request rate,
-- its known balance enough for the job's estimate, and the job's principal under its share cap there.
-- Among the pools' ready jobs that may go, the one with the lowest rank goes (its priority step, then its
-- fair-share tag: ready_add.lua): a full pool never holds back another pool's jobs. A job below interactive
-- priority queued longer than the aging time competes in the interactive class, as if it had just arrived
-- there. Among the accounts, the one with the most headroom in the job's pool (ties: the earlier one).
--
-- KEYS[1]  dispatched     sorted set  member = job id, score = ms taken (recovery)
-- KEYS[2]  waiting        sorted set  ready jobs by principal (ready_add.lua)
-- KEYS[3]  creation log   sorted set  member "<job id>:<ms>", score = ms: who got the last hour's creations
-- then per account a = 0..A-1, 5 keys:
--   cooldown (string, end ms), pause (string, why), create requests (sorted set, score = ms), balance (hash:
--   credits as last read, centi-credits spent since; no hash: unknown, any job may go), holds (sorted set:
--   jobs sent there not charged yet, score = estimate in centi-credits)
-- then per pool p = 0..P-1, 4 + 3A keys:
--   ready (sorted set, member = job id, score = rank), meta (hash, ready_add.lua), fair (hash, V per step),
--   age (sorted set, created ms), then per account a: creations (sorted set, score = ms), leases (sorted
--   set, score = expiry ms), lease owners (hash job id -> principal)
-- ARGV:
--   ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
--   ARGV[2]  lease TTL ms
--   ARGV[3]  cap on an in-progress wait hint ms (a release may come long before the lease expires)
--   ARGV[4]  wait hint for a paused account ms (pauses have no end time; waiters re-check)
--   ARGV[5]  A, ARGV[6] P
--   ARGV[7]  '' to choose from the ready sets; a job id to take a slot for that job only (pool 0, its
--            ready set and pins unused), as a submitter of one given job does
--   ARGV[8]  how many of a pool's first ready jobs are looked at (a pinned or capped job may not go where
--            the next one could)
--   ARGV[9]  STEP (a priority step's weight in a rank), ARGV[10] aging ms
--   ARGV[11] C, then C pairs: a capped principal, its share of each pool's in-progress slots (0..1]
--   then per account a: its name, createTask requests allowed per window (0 = no limit), that window ms
--   then per pool p, per account a: in-progress limit, creations limit, creation window ms
-- Effects: drops expired leases and creations and requests that left their windows on every account
--   looked at; on success removes the job from its ready sets, notes it dispatched (and its principal's
--   creation), moves its step's virtual time to its tag, and adds its creation entry, its lease (now +
--   TTL, owned by its principal) and its createTask request together, and holds its estimate on the
--   account. A job that already holds a lease in its pool on a usable account gets that account back, lease
--   extended, with no second creation.
-- Returns:
--   {1, job, p, a, rank}    the job (of pool p, rank as it was in its ready set: a string) holds a slot on
--                           account a
--   {0, wait_ms, reason}    jobs are ready but none may go; wait_ms (> 0) until the soonest may, reason one of
--                           in_progress | creations | requests | cooldown | paused | credits (no account that
--                           may take them has the balance their estimates need)
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
local step_weight, aging = tonumber(ARGV[9]), tonumber(ARGV[10])
local caps = {}
local C = tonumber(ARGV[11])
for c = 0, C - 1 do
  caps[ARGV[12 + 2 * c]] = tonumber(ARGV[13 + 2 * c])
end
local account_args = 12 + 2 * C
local waiting, creation_log = KEYS[2], KEYS[3]

local accounts = {}
for a = 0, A - 1 do
  local acc = {
    cooldown = KEYS[4 + 5 * a], pause = KEYS[5 + 5 * a], requests = KEYS[6 + 5 * a], holds = KEYS[8 + 5 * a],
    name = ARGV[account_args + 3 * a], rate = tonumber(ARGV[account_args + 1 + 3 * a]),
    rate_window = tonumber(ARGV[account_args + 2 + 3 * a]),
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
  local balance = redis.call('HMGET', KEYS[7 + 5 * a], 'credits', 'spent')
  if balance[1] then
    acc.available = math.floor(tonumber(balance[1]) * 100 + 0.5) - (tonumber(balance[2]) or 0)
    local held = redis.call('ZRANGE', acc.holds, 0, -1, 'WITHSCORES')
    for h = 2, #held, 2 do
      acc.available = acc.available - tonumber(held[h])
    end
  end
  accounts[a + 1] = acc
end

local pool_base = 4 + 5 * A
local limits_base = account_args + 3 * A
local pools = {}
for p = 0, P - 1 do
  local k = pool_base + p * (4 + 3 * A)
  local pool = {ready = KEYS[k], meta = KEYS[k + 1], fair = KEYS[k + 2], age = KEYS[k + 3], slots = {}}
  for a = 0, A - 1 do
    local l = limits_base + 3 * (p * A + a)
    pool.slots[a + 1] = {
      creations = KEYS[k + 4 + 3 * a], leases = KEYS[k + 5 + 3 * a], owners = KEYS[k + 6 + 3 * a],
      in_progress_limit = tonumber(ARGV[l]), creations_limit = tonumber(ARGV[l + 1]), window = tonumber(ARGV[l + 2]),
    }
  end
  pools[p + 1] = pool
end

-- "principal<TAB>step<TAB>created ms<TAB>pin<TAB>estimate" (ready_add.lua; a meta written before estimates has
-- no estimate part)
local function parse_meta(text)
  if not text then
    return '', 0, '0', false, 0
  end
  local principal, step, created, place = string.match(text, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  local pin, estimate = string.match(place or '', '^([^\t]*)\t?(.*)$')
  return principal or '', tonumber(step) or 0, created or '0', (pin ~= nil and pin ~= '') and pin or false,
    tonumber(estimate) or 0
end

-- Whether `acc` can pay `estimate` (centi-credits) as far as is known; one that cannot is marked short.
local function pays(acc, estimate)
  if acc.available == nil or acc.available >= estimate then
    return true
  end
  acc.short = true
  return false
end

-- A pool's counts on an account, read (and its logs trimmed) once per call.
local function slot_state(s)
  if not s.read then
    local expired = redis.call('ZRANGEBYSCORE', s.leases, '-inf', now)
    if #expired > 0 then
      redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', now)
      redis.call('HDEL', s.owners, unpack(expired))
    end
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
  if acc.short and acc.usable then
    return paused_wait, 'credits'
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

-- Whether `principal` is under its share cap in pool slot `s` (a principal without a cap always is).
local function under_cap(s, principal)
  local share = caps[principal]
  if not share then
    return true
  end
  local held = 0
  for _, owner in ipairs(redis.call('HVALS', s.owners)) do
    if owner == principal then
      held = held + 1
    end
  end
  return held < math.max(1, math.floor(share * s.in_progress_limit + 0.5))
end

-- Where `job` of `pool` may go now: the account holding its lease (reused), else the one with the most
-- room; nil when none may take it.
local function place(pool, job, pin, principal, estimate)
  for a = 1, #accounts do
    slot_state(pool.slots[a]) -- expired leases and old creations go first, on every account looked at
  end
  for a, acc in ipairs(accounts) do
    if (not pin or pin == acc.name) and redis.call('ZSCORE', pool.slots[a].leases, job) then
      if acc.usable and pays(acc, estimate) then
        return a, true
      end
      -- a slot held on an account that cannot take it now is given up (its creation stays spent)
      redis.call('ZREM', pool.slots[a].leases, job)
      redis.call('HDEL', pool.slots[a].owners, job)
      pool.slots[a].read = false
    end
  end
  local best, best_room = nil, 0
  for a, acc in ipairs(accounts) do
    if acc.usable and (not pin or pin == acc.name) and pays(acc, estimate) then
      local s = slot_state(pool.slots[a])
      local room = math.min(s.in_progress_limit - s.in_progress, s.creations_limit - s.created)
      if room > best_room and under_cap(s, principal) then
        best, best_room = a, room
      end
    end
  end
  return best, false
end

local chosen -- {pool index, job, rank, account, reused, rank as stored, principal, step, estimate}
local any_ready = false

local function consider(p, pool, job, rank, stored, meta_text)
  any_ready = true
  if chosen and rank >= chosen[3] then
    return
  end
  local principal, step, _, pin, estimate = parse_meta(meta_text)
  local a, reused = place(pool, job, pin, principal, estimate)
  if a then
    chosen = {p, job, rank, a, reused, stored, principal, step, estimate}
  end
end

for p, pool in ipairs(pools) do
  if given ~= '' then
    if p == 1 then
      consider(p, pool, given, 0, '0', false)
    end
  else
    -- The oldest job below interactive priority, once older than the aging time, competes in the
    -- interactive class, as if it had just arrived there (at its virtual time): nothing starves.
    local oldest = redis.call('ZRANGE', pool.age, 0, 0, 'WITHSCORES')
    if oldest[1] and tonumber(oldest[2]) <= now - aging then
      local text = redis.call('HGET', pool.meta, oldest[1])
      local stored = redis.call('ZSCORE', pool.ready, oldest[1])
      if stored then
        consider(p, pool, oldest[1], tonumber(redis.call('HGET', pool.fair, 'V:0')) or 0, stored, text)
      end
    end
    local heads = redis.call('ZRANGE', pool.ready, 0, look - 1, 'WITHSCORES')
    for h = 1, #heads, 2 do
      local rank = tonumber(heads[h + 1])
      if chosen and rank >= chosen[3] then
        break
      end
      consider(p, pool, heads[h], rank, heads[h + 1], redis.call('HGET', pool.meta, heads[h]))
    end
  end
end

if not any_ready then
  return {2}
end

local function unique(key, base)
  local member, k = base, 1
  while redis.call('ZSCORE', key, member) do
    k = k + 1
    member = base .. ':' .. k
  end
  return member
end

if chosen then
  local p, job, a, reused, stored, principal, step = chosen[1], chosen[2], chosen[4], chosen[5], chosen[6], chosen[7], chosen[8]
  local pool, acc = pools[p], accounts[a]
  local s = pool.slots[a]
  if given == '' then
    local _, _, created = parse_meta(redis.call('HGET', pool.meta, job))
    redis.call('ZREM', pool.ready, job)
    redis.call('ZREM', pool.age, job)
    redis.call('HDEL', pool.meta, job)
    redis.call('ZREM', waiting, principal .. '|' .. created .. '|' .. job)
    redis.call('ZADD', KEYS[1], now, job)
    -- the step's virtual time moves to the tag of the job it serves
    local tag = tonumber(stored) - step * step_weight
    local v_field = 'V:' .. step
    if tag > (tonumber(redis.call('HGET', pool.fair, v_field)) or 0) then
      redis.call('HSET', pool.fair, v_field, string.format('%.6f', tag))
    end
    redis.call('ZADD', creation_log, now, job .. ':' .. string.format('%d', now) .. ':' .. principal)
    redis.call('ZREMRANGEBYSCORE', creation_log, '-inf', now - 3600000)
  end
  if reused then
    local held = tonumber(redis.call('ZSCORE', s.leases, job))
    redis.call('ZADD', s.leases, math.max(held, now + lease_ttl), job)
  else
    redis.call('ZADD', s.creations, now, unique(s.creations, job .. ':' .. string.format('%d', now)))
    redis.call('PEXPIRE', s.creations, s.window + slack)
    redis.call('ZADD', s.leases, now + lease_ttl, job)
  end
  redis.call('HSET', s.owners, job, principal)
  if chosen[9] > 0 then
    redis.call('ZADD', acc.holds, chosen[9], job)
  end
  if acc.rate > 0 then
    redis.call('ZADD', acc.requests, now, unique(acc.requests, job .. ':' .. string.format('%d', now)))
    redis.call('PEXPIRE', acc.requests, acc.rate_window + slack)
  end
  return {1, job, p - 1, a - 1, stored}
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
