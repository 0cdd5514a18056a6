-- stream_lease.lua: take (or renew) a place for one open event stream of a principal, within its cap.
--
-- KEYS[1]  leases  sorted set  member = stream id, score = lease end ms (Redis clock)
-- ARGV[1]  the stream id
-- ARGV[2]  lease length ms
-- ARGV[3]  the principal's cap on open streams; 0 = renew only (an existing lease, whatever the count)
-- Effects: drops lapsed leases (a web that died without closing its streams); sets the stream's lease to
--   now + length when it has one, or when there is room for a new one.
-- Returns 1 when the stream holds a lease now, 0 when it was refused (at the cap, or no lease to renew).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local length, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held then
  if cap == 0 or redis.call('ZCARD', KEYS[1]) >= cap then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + length, ARGV[1])
redis.call('PEXPIRE', KEYS[1], length + 1000)
return 1
