-- principal_admit.lua: admit a principal's new (or resubmitted) jobs against its limits, and count them,
-- in one step: two requests racing for the last place cannot both get it.
--
-- KEYS[1]  live set    sorted set  the principal's jobs not yet seen finished (member = job id, score = ms)
-- KEYS[2]  kept set    sorted set  the principal's job records in Redis, finished ones included (same form)
-- KEYS[3]  bucket      hash        the principal's enqueue token bucket (tokens, ts), as quota_tokens.lua
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  max live jobs
-- ARGV[3]  max kept jobs
-- ARGV[4]  bucket refill rate, tokens (jobs) per second
-- ARGV[5]  bucket size (burst)
-- ARGV[6]  how many of the ids are new records (the first ones); the rest already have a record
-- ARGV[7..]  the job ids
-- Effects: when every limit holds, takes one token per id, ZADDs every id to the live set and the new
--   records' ids to the kept set (score now); otherwise writes nothing (a refused request takes nothing).
-- Returns:
--   {1}                        admitted and counted
--   {0, limit, count, wait_s}  refused by limit max_live_jobs | max_kept_jobs (count: how many there are)
--                              or enqueue_per_s (wait_s: seconds until the tokens are there)

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep the bucket from expiring early
end
local max_live, max_kept = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local new_records = tonumber(ARGV[6])
local count = #ARGV - 6

local live = redis.call('ZCARD', KEYS[1])
if live + count > max_live then
  return {0, 'max_live_jobs', live, '0'}
end
local kept = redis.call('ZCARD', KEYS[2])
if kept + new_records > max_kept then
  return {0, 'max_kept_jobs', kept, '0'}
end

local state = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if not tokens or not ts then
  tokens, ts = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
if tokens < count then
  return {0, 'enqueue_per_s', live, tostring((count - tokens) / rate)}
end
redis.call('HSET', KEYS[3], 'tokens', tokens - count, 'ts', string.format('%d', math.max(now, ts)))
redis.call('PEXPIRE', KEYS[3], math.ceil(burst / rate * 1000) + 1000 + slack)

for i = 7, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
  if i - 7 < new_records then
    redis.call('ZADD', KEYS[2], now, ARGV[i])
  end
end
return {1}
