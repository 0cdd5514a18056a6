-- quota_calls.lua: take one call from a rolling-window limit shared by every process (an account's
-- recordInfo calls, all poll workers): at most ARGV[2] calls in any window of ARGV[3] ms, counted the way
-- the upstream counts them (every rolling window, no burst on top).
--
-- KEYS[1]  log  sorted set  member "<caller>:<ms>[:<k>]" (unique per call), score = call ms
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  calls allowed per window (>= 1)
-- ARGV[3]  window ms
-- ARGV[4]  caller (a job id: names the entry, for debugging)
-- Returns a string: "0" if the call was logged (go ahead), else the seconds until a logged call leaves
-- the window (nothing is logged then).

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep the log from expiring early
end
local calls = tonumber(ARGV[2])
local window = tonumber(ARGV[3])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= calls then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(math.max(1, tonumber(oldest[2]) + window - now) / 1000)
end
local base = ARGV[4] .. ':' .. string.format('%d', now)
local member, k = base, 1
while redis.call('ZSCORE', KEYS[1], member) do
  k = k + 1
  member = base .. ':' .. k
end
redis.call('ZADD', KEYS[1], now, member)
redis.call('PEXPIRE', KEYS[1], window + 1000 + slack)
return '0'
