-- job_create.lua: write a new queued job's record, or return the job an idempotency key already names.
--
-- Key layout (all passed in, see core/keys.py):
--   KEYS[1]  job hash         <prefix>:job:<id>        the record; field names = Job attributes
--   KEYS[2]  queued index     <prefix>:state:queued    sorted set, member = job id, score = ms entered
--   KEYS[3]  idempotency key  <prefix>:idem:<key>      string = job id; only when the request has a key
-- ARGV:
--   ARGV[1]  the new job id
--   ARGV[2]  '' normally; a job id the idempotency key may be taken over from (its record is gone)
--   ARGV[3..]  field, value pairs of the request (never id, state or created_at)
-- Effects: SET idempotency key (no expiry while the job lives); HSET id, state=queued, created_at (Redis
--   TIME, float seconds) and the request fields; ZADD the id to the queued index. The job's submit message
--   is pushed by the caller once every record of its call is written (JobStore.create_many), so a call's
--   jobs can be taken back whole (job_discard.lua) before any worker knows them.
-- Returns:
--   {1, id, created_at}  created
--   {0, existing_id}     the idempotency key already names this job; nothing written

local id, stale = ARGV[1], ARGV[2]
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing and existing ~= stale then
    return {0, existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('job ' .. id .. ' already exists')
end
if KEYS[3] then
  redis.call('SET', KEYS[3], id)
end

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('HSET', KEYS[1], 'id', id, 'state', 'queued', 'created_at', now, unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], now_ms, id)
return {1, id, now}
