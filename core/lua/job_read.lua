-- job_read.lua: a job's record, as a script so it can share one pipeline (and its NOSCRIPT handling)
-- with the scripts that move the job (JobStore.claim reads and claims in one round trip).
--
-- KEYS:
--   KEYS[1]  job hash  <prefix>:job:<id>
-- Returns: the hash as a flat field/value list (empty when the job does not exist).

return redis.call('HGETALL', KEYS[1])
