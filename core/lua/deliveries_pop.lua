-- deliveries_pop.lua: take the members of a schedule that are due, each by one caller only.
--
-- KEYS[1]  a sorted set of delivery ids scored by when they are due (ms): <prefix>:deliveries:due or
--          <prefix>:deliveries:sending (scored by when their sender is presumed dead)
-- ARGV[1]  now (ms); ARGV[2] the most to take
-- Returns the ids taken (removed from the set in the same step).

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return ids
