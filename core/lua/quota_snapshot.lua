-- quota_snapshot.lua: read every account's quota state at one instant (read-only).
--
-- KEYS, four per account i = 0..n-1:
--   KEYS[4i+1]  creations  sorted set  score = creation ms
--   KEYS[4i+2]  leases     sorted set  member = job id, score = lease expiry ms
--   KEYS[4i+3]  cooldown   string      cooldown end ms (limiter clock)
--   KEYS[4i+4]  pause      string      why the account is paused
-- ARGV[1]      now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[i+2]    creation window ms of account i
-- Returns one {creations in the window, live leases, cooldown left ms, pause reason or nil} per account.
-- Expired entries are counted out, not removed, so this never changes what a writer sees.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local result = {}
for i = 0, #KEYS / 4 - 1 do
  local window = tonumber(ARGV[i + 2])
  result[i + 1] = {
    redis.call('ZCOUNT', KEYS[4 * i + 1], '(' .. string.format('%d', now - window), '+inf'),
    redis.call('ZCOUNT', KEYS[4 * i + 2], '(' .. string.format('%d', now), '+inf'),
    math.max(0, (tonumber(redis.call('GET', KEYS[4 * i + 3])) or 0) - now),
    redis.call('GET', KEYS[4 * i + 4]),
  }
end
return result
