-- quota_renew.lua: extend a job's lease, if it still has one. Used for poll renewals and for the
-- unknown-outcome hold (a longer grace); never shortens a lease.
--
-- KEYS[1]  leases  sorted set  member = job id, score = lease expiry ms
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  job id
-- ARGV[3]  TTL ms: the lease runs until at least now + TTL
-- Returns 1 if the lease was extended, 0 if the job holds none (it was released or reclaimed). A lease
-- past its expiry that nobody has dropped yet is still counted by everyone, so it is extended too.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not held then
  return 0
end
redis.call('ZADD', KEYS[1], math.max(tonumber(held), now + tonumber(ARGV[3])), ARGV[2])
return 1
