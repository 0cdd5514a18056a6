-- quota_detach.lua: a job is tried again while its unknown task may still run upstream: move its lease to a
-- member of its own, so the slot stays taken until the lease expires, and the job can take a fresh one.
--
-- KEYS[1]  leases  sorted set  member = job id (or held:<job id>:<n>), score = lease expiry ms
-- ARGV[1]  the job id
-- ARGV[2]  the member the held slot moves to ("held:<job id>:<n>")
-- Returns 1 if the job held a lease (now moved), 0 if it held none.

local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry then
  return 0
end
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
