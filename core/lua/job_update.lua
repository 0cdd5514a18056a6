-- job_update.lua: compare-and-set a job's fields without changing its state.
--
-- KEYS:
--   KEYS[1]  job hash  <prefix>:job:<id>
-- ARGV:
--   ARGV[1]  n, then ARGV[2..1+n] the states the job may be in now
--   then     s, then s pairs field, value to HSET
--   then     d, then d field names to HDEL
--   then     c, then c pairs field, increment to HINCRBY
-- Never touches state, at_*, task_id or expiry (those belong to job_transition.lua); sets updated_at
-- (Redis TIME, float s).
-- Returns: 1 done; 0 refused (job missing, or its state not among the n) with nothing written.

local job = KEYS[1]
local n = tonumber(ARGV[1])
local state = redis.call('HGET', job, 'state')
if not state then
  return 0
end
local ok = false
for i = 2, 1 + n do
  if ARGV[i] == state then
    ok = true
    break
  end
end
if not ok then
  return 0
end

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))

local a = 2 + n
local s = tonumber(ARGV[a])
redis.call('HSET', job, 'updated_at', now, unpack(ARGV, a + 1, a + 2 * s))
a = a + 2 * s + 1
local d = tonumber(ARGV[a])
if d > 0 then
  redis.call('HDEL', job, unpack(ARGV, a + 1, a + d))
end
a = a + d + 1
local c = tonumber(ARGV[a])
for i = a + 1, a + 2 * c, 2 do
  redis.call('HINCRBY', job, ARGV[i], ARGV[i + 1])
end
return 1
