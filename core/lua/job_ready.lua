-- job_ready.lua: put a queued job back in its pool's ready set when nothing holds it: it is not there, and
-- no submitter took it from there lately (a submitter moves the job it took out of queued within moments;
-- one still queued well after the take lost its submitter).
--
-- KEYS[1]  job hash         <prefix>:job:<id>   (its rank, written when it first became ready)
-- KEYS[2]  ready set        <prefix>:ready:<pool>
-- KEYS[3]  dispatched       <prefix>:dispatched   sorted set, member = job id, score = ms taken
-- KEYS[4]  meta             <prefix>:ready:<pool>:meta
-- KEYS[5]  dispatch wakes   list
-- KEYS[6]  age              <prefix>:ready:<pool>:age
-- KEYS[7]  waiting          <prefix>:waiting
-- ARGV[1]  job id
-- ARGV[2]  its rank when the record has none (a job queued before ranks were written)
-- ARGV[3..6]  its principal, step, created ms (13 digits), pin ('' = none)
-- ARGV[7]  ms after a take during which the job is left to its taker
-- ARGV[8]  accounts n (0: the take is not looked into), then KEYS[8] the creation log and, per account
--          a = 0..n-1, KEYS[9+5a..13+5a]: its pool's creations, leases and lease owners, its createTask
--          requests and its balance holds (quota_dispatch.lua)
-- Returns 1 when the job was put back, else 0 (not queued, already ready, or taken lately).
--
-- A take that lost its submitter before the job was ever claimed (no at_submitting after it) sent
-- nothing: what quota_dispatch.lua wrote for it — the creation, request and creation-log entries scored
-- with the take's ms, the lease, the balance hold — goes back with it. Kept, it would count a creation
-- that never happened against the window until the window passed it (a lease lapsed by then is not
-- reused: the next take spends a second creation for the same job).

local id = ARGV[1]
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' or redis.call('ZSCORE', KEYS[2], id) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = tonumber(redis.call('ZSCORE', KEYS[3], id))
if taken and taken > now - tonumber(ARGV[7]) then
  return 0
end
local principal, step, created, pin = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if taken and (tonumber(redis.call('HGET', KEYS[1], 'at_submitting')) or 0) * 1000 < taken then
  local prefix = id .. ':'
  local function give_back(key)
    local found = false
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, taken, taken)) do
      if string.sub(member, 1, #prefix) == prefix then
        redis.call('ZREM', key, member)
        found = true
      end
    end
    return found
  end
  local accounts = tonumber(ARGV[8]) or 0
  if accounts > 0 then
    give_back(KEYS[8])
  end
  for a = 0, accounts - 1 do
    local k = 9 + 5 * a
    if give_back(KEYS[k]) then
      redis.call('ZREM', KEYS[k + 1], id)
      redis.call('HDEL', KEYS[k + 2], id)
      give_back(KEYS[k + 3])
      redis.call('ZREM', KEYS[k + 4], id)
    end
  end
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'rank') or ARGV[2], id)
redis.call('HSET', KEYS[4], id, principal .. '\t' .. step .. '\t' .. created .. '\t' .. pin)
if step > 0 then
  redis.call('ZADD', KEYS[6], created, id)
end
redis.call('ZADD', KEYS[7], 0, principal .. '|' .. created .. '|' .. id)
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 63)
redis.call('PEXPIRE', KEYS[5], 60000)
return 1
