-- quota_acquire.lua: take an in-progress slot and a creation, atomically, on the account with the most headroom.
--
-- KEYS, four per candidate account i = 0..n-1, in preference order (ties go to the earlier account):
--   KEYS[4i+1]  creations  sorted set  member "<job_id>:<ms>[:<k>]" (unique per creation), score = creation ms
--   KEYS[4i+2]  leases     sorted set  member = job id, score = lease expiry ms
--   KEYS[4i+3]  cooldown   string      cooldown end ms (limiter clock); PX expiry only cleans up
--   KEYS[4i+4]  pause      string      why the account is paused; no expiry
-- ARGV:
--   ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
--   ARGV[2]  job id
--   ARGV[3]  lease TTL ms
--   ARGV[4]  cap on an in-progress wait hint ms (a release may come long before the lease expires)
--   ARGV[5]  wait hint for a paused account ms (pauses have no end time; waiters re-check)
--   ARGV[3i+6], ARGV[3i+7], ARGV[3i+8]  in-progress limit, creations limit, creation window ms of account i
-- Effects: drops expired leases (score <= now) and creations that left the window (score <= now - window)
--   on every candidate; on success adds the creation entry and the lease (score now + TTL) together.
-- Returns:
--   {1, i}                   a slot is held on account i (0-based); a job that already held a lease on a
--                            usable candidate gets that account back, lease extended, no second creation
--                            (a lease it held on a cooling or paused candidate is dropped first)
--   {0, wait_ms, reason, i}  nothing free; the account i frees soonest, after wait_ms (> 0), reason one of
--                            in_progress | creations | cooldown | paused

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep key expiries from firing early
end
local job = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local in_progress_cap = tonumber(ARGV[4])
local paused_wait = tonumber(ARGV[5])

local accounts = {}
for i = 0, #KEYS / 4 - 1 do
  local a = {
    creations = KEYS[4 * i + 1], leases = KEYS[4 * i + 2],
    in_progress_limit = tonumber(ARGV[3 * i + 6]),
    creations_limit = tonumber(ARGV[3 * i + 7]),
    window = tonumber(ARGV[3 * i + 8]),
  }
  redis.call('ZREMRANGEBYSCORE', a.leases, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', a.creations, '-inf', now - a.window)
  a.in_progress = redis.call('ZCARD', a.leases)
  a.created = redis.call('ZCARD', a.creations)
  a.cooling = math.max(0, (tonumber(redis.call('GET', KEYS[4 * i + 3])) or 0) - now)
  a.paused = redis.call('GET', KEYS[4 * i + 4])
  a.usable = (not a.paused) and a.cooling == 0
  accounts[i + 1] = a
end

-- Score of the entry whose departure frees one place when `count` entries fill a cap of `limit`.
local function freeing_score(key, count, limit)
  local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  return tonumber(entry[2])
end

local function wait_for(a)
  if a.paused then
    return paused_wait, 'paused'
  end
  local wait, reason = 0, 'in_progress'
  if a.in_progress >= a.in_progress_limit then
    wait = math.min(in_progress_cap, freeing_score(a.leases, a.in_progress, a.in_progress_limit) - now)
  end
  if a.created >= a.creations_limit then
    local creations_wait = freeing_score(a.creations, a.created, a.creations_limit) + a.window - now
    if creations_wait > wait then
      wait, reason = creations_wait, 'creations'
    end
  end
  if a.cooling >= wait then
    wait, reason = a.cooling, 'cooldown'
  end
  return wait, reason
end

-- A redelivered submit for a job that already holds a slot: the same account, no second creation.
-- A slot held on an account that is cooling down or paused is given up (its creation stays spent), so
-- the job can go wherever there is room instead of waiting on that account.
for i, a in ipairs(accounts) do
  local held = redis.call('ZSCORE', a.leases, job)
  if held then
    if a.usable then
      redis.call('ZADD', a.leases, math.max(tonumber(held), now + lease_ttl), job)
      return {1, i - 1}
    end
    redis.call('ZREM', a.leases, job)
    a.in_progress = a.in_progress - 1
  end
end

local best, best_room = nil, 0
for i, a in ipairs(accounts) do
  if a.usable then
    local room = math.min(a.in_progress_limit - a.in_progress, a.creations_limit - a.created)
    if room > best_room then
      best, best_room = i, room
    end
  end
end

if best then
  local a = accounts[best]
  local base = job .. ':' .. string.format('%d', now)
  local member, k = base, 1
  while redis.call('ZSCORE', a.creations, member) do
    k = k + 1
    member = base .. ':' .. k
  end
  redis.call('ZADD', a.creations, now, member)
  redis.call('PEXPIRE', a.creations, a.window + slack)
  redis.call('ZADD', a.leases, now + lease_ttl, job)
  return {1, best - 1}
end

local soonest, soonest_wait, soonest_reason = nil, nil, nil
for i, a in ipairs(accounts) do
  local wait, reason = wait_for(a)
  if not soonest or wait < soonest_wait then
    soonest, soonest_wait, soonest_reason = i, wait, reason
  end
end
return {0, soonest_wait, soonest_reason, soonest - 1}
