-- quota_reclaim.lua: drop expired leases (their holders died or stopped renewing) and say whose they were.
--
-- KEYS[i]  leases of account i  sorted set  member = job id, score = lease expiry ms
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- Returns one list of reclaimed job ids per key, in KEYS order.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local result = {}
for i, leases in ipairs(KEYS) do
  result[i] = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #result[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  end
end
return result
