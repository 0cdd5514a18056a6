-- job_ready.lua: put a queued job back in its pool's ready set when nothing holds it: it is not there, and
-- no submitter took it from there lately (a submitter moves the job it took out of queued within moments;
-- one still queued well after the take lost its submitter).
--
-- KEYS[1]  job hash         <prefix>:job:<id>
-- KEYS[2]  ready set        <prefix>:ready:<pool>
-- KEYS[3]  dispatched       <prefix>:dispatched   sorted set, member = job id, score = ms taken
-- KEYS[4]  pins             <prefix>:ready:<pool>:pins
-- KEYS[5]  dispatch wakes   list
-- ARGV[1]  job id
-- ARGV[2]  its rank (core.messages.ready_rank)
-- ARGV[3]  the account it is pinned to ('' = none)
-- ARGV[4]  ms after a take during which the job is left to its taker
-- Returns 1 when the job was put back, else 0 (not queued, already ready, or taken lately).

local id = ARGV[1]
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' or redis.call('ZSCORE', KEYS[2], id) then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = tonumber(redis.call('ZSCORE', KEYS[3], id))
if taken and taken > now - tonumber(ARGV[4]) then
  return 0
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZADD', KEYS[2], ARGV[2], id)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[4], id, ARGV[3])
end
redis.call('LPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], 0, 63)
redis.call('PEXPIRE', KEYS[5], 60000)
return 1
