-- batch_settle.lua: count batch jobs that reached a terminal state, each exactly once.
--
-- Several settlers (the reconciler, a `batch submit --wait`) may look at the same jobs at once; the SREM
-- from the pending set decides who counts a job, so no job is counted twice.
--
-- KEYS:
--   KEYS[1]  pending set   <prefix>:batch:<id>:pending   job ids not yet counted
--   KEYS[2]  batch hash    <prefix>:batch:<id>           counters n:<state>
-- ARGV:
--   ARGV[1..]  job id, terminal state pairs (state 'missing' for a record that is gone)
-- Effects: for each pair whose id was still pending: SREM it, HINCRBY n:<state> 1.
-- Returns: how many jobs were counted by this call.

local counted = 0
for i = 1, #ARGV, 2 do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[i + 1], 1)
    counted = counted + 1
  end
end
return counted
