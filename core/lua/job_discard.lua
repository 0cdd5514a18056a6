-- job_discard.lua: take back a job job_create.lua wrote, while it is still queued and untouched: a
-- request that created several jobs failed part-way, and its jobs are kept all together or not at all.
--
-- KEYS[1]  job hash         <prefix>:job:<id>
-- KEYS[2]  queued index     <prefix>:state:queued
-- KEYS[3]  broker queue     <prefix>:celery:submit[:<step>]  where its submit message was pushed
-- KEYS[4]  ready set        <prefix>:ready:<pool>  the job's pool's (it is there once its message is)
-- KEYS[5]  pins             <prefix>:ready:<pool>:pins
-- KEYS[6]  idempotency key  <prefix>:idem:<key>  only when the job has one
-- ARGV[1]  the job id
-- ARGV[2]  its submit message as pushed ('' when none was)
-- Effects: only when the job is still queued: LREM its message, DEL the record, ZREM it from the queued
--   index and its ready set, HDEL its pin, and DEL the idempotency key when that still names it. Every command here frees memory, so the
--   script runs on a Redis that is out of memory (none of them is refused there).
-- Returns 1 when the job was taken back, 0 when it had moved on (a worker got to it: it stays).

local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' then
  return 0
end
if ARGV[2] ~= '' then
  redis.call('LREM', KEYS[3], 1, ARGV[2])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if KEYS[6] and redis.call('GET', KEYS[6]) == ARGV[1] then
  redis.call('DEL', KEYS[6])
end
return 1
