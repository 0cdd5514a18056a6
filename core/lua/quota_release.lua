-- quota_release.lua: a job's upstream task ended: give its in-progress slot back, wake one waiting
-- submitter, and take the job off the poll plan.
--
-- KEYS[1]  leases       sorted set  member = job id, score = lease expiry ms
-- KEYS[2]  dispatch wakes list     one entry per released slot; waiting submitters BLPOP it
-- KEYS[3]  poll plan    sorted set  member = job id (poll_plan.lua)
-- KEYS[4]  poll owners  hash        job id -> poll message
-- KEYS[5]  lease owners hash        job id -> principal (quota_dispatch.lua)
-- ARGV[1]  job id
-- ARGV[2]  most wakes kept (more than the submitters that can wait wake nobody more)
-- Returns 1 if the job held a slot (a wake was posted), else 0.

local job = ARGV[1]
redis.call('ZREM', KEYS[3], job)
redis.call('HDEL', KEYS[4], job)
redis.call('HDEL', KEYS[5], job)
if redis.call('ZREM', KEYS[1], job) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
