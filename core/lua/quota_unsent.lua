-- quota_unsent.lua: a slot was taken but createTask was surely never sent (the job's record has no
-- create_sent_at): give back the creation it spent, where the job still holds its lease.
--
-- KEYS[1]  leases     sorted set  member = job id (quota_acquire.lua)
-- KEYS[2]  creations  sorted set  member "<job_id>:<ms>[:<k>]", score = creation ms
-- ARGV[1]  job id
-- Removes the job's newest creation entry (the one its lease was taken with) when the lease is there;
-- the lease itself is released by quota_release.lua. Returns 1 if an entry was given back, else 0.

local job = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], job) then
  return 0
end
local prefix = job .. ':'
local entries = redis.call('ZRANGE', KEYS[2], 0, -1)
for i = #entries, 1, -1 do
  if string.sub(entries[i], 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[2], entries[i])
    return 1
  end
end
return 0
