-- quota_reclaim.lua: drop expired leases (their holders died or stopped renewing) and say whose they were.
--
-- KEYS[2i-1]  leases of pool slot i        sorted set  member = job id, score = lease expiry ms
-- KEYS[2i]    lease owners of pool slot i  hash        job id -> principal (quota_dispatch.lua)
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- Returns one list of reclaimed job ids per pool slot, in KEYS order.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local result = {}
for i = 1, #KEYS / 2 do
  local leases, owners = KEYS[2 * i - 1], KEYS[2 * i]
  result[i] = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #result[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    redis.call('HDEL', owners, unpack(result[i]))
  end
end
return result
