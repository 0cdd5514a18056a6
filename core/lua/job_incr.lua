-- job_incr.lua: add to a counter field of an existing job (never creates a record).
--
-- KEYS:
--   KEYS[1]  job hash  <prefix>:job:<id>
-- ARGV:
--   ARGV[1]  field name
--   ARGV[2]  increment (integer)
-- Effects: HINCRBY the field; updated_at = Redis TIME (float s).
-- Returns: the new value; nil (false) when the job does not exist.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'updated_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
