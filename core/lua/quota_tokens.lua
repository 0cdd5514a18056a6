-- quota_tokens.lua: take tokens from a bucket shared by every process: an ingress principal's enqueued
-- jobs (one per job, all web replicas). (recordInfo calls are counted over rolling windows instead, with
-- no burst on top: quota_calls.lua.)
--
-- KEYS[1]  bucket  hash  tokens = tokens left after the last call (float), ts = that call's time ms;
--                        PEXPIRE'd once a full refill has passed (a missing bucket is a full one)
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  refill rate, tokens per second
-- ARGV[3]  burst (bucket size, >= 1)
-- ARGV[4]  tokens to take, all or none (default 1; at most the burst)
-- Returns a string (Lua numbers would be truncated to integers): "0" if the tokens were taken, else the
-- seconds until they will be there (nothing is taken then).

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep the bucket from expiring early
end
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local want = tonumber(ARGV[4]) or 1

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if not tokens or not ts then
  tokens, ts = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)

local wait = 0
if tokens >= want then
  tokens = tokens - want
else
  wait = (want - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', string.format('%d', math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000 + slack)
if wait == 0 then
  return '0'
end
return tostring(wait)
