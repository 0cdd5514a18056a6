-- job_create.lua: write a new job's record, or return the job an idempotency key already names.
--
-- Key layout (all passed in, see core/keys.py):
--   KEYS[1]  job hash         <prefix>:job:<id>        the record; field names = Job attributes
--   KEYS[2]  state index      <prefix>:state:<state>   sorted set, member = job id, score = ms entered
--   then     idempotency key  <prefix>:idem:<key>      string = job id; only when ARGV[4] is '1'
--   then     children set     <prefix>:children:<parent>  only when ARGV[5] is '1'
-- ARGV:
--   ARGV[1]  the new job id
--   ARGV[2]  '' normally; a job id the idempotency key may be taken over from (its record is gone)
--   ARGV[3]  its first state: queued, or waiting (a derived job whose parent is not stored yet)
--   ARGV[4]  '1' when the request has an idempotency key
--   ARGV[5]  '1' when the job waits for its parent (it joins the parent's children set)
--   ARGV[6..]  field, value pairs of the request (never id, state or created_at)
-- Effects: SET idempotency key (no expiry while the job lives); HSET id, state, created_at (Redis
--   TIME, float seconds) and the request fields; ZADD the id to its state's index; SADD it to its
--   parent's children set. The job's submit message
--   is pushed by the caller once every record of its call is written (JobStore.create_many), so a call's
--   jobs can be taken back whole (job_discard.lua) before any worker knows them.
-- Returns:
--   {1, id, created_at}  created
--   {0, existing_id}     the idempotency key already names this job; nothing written

local id, stale, state = ARGV[1], ARGV[2], ARGV[3]
local idem, children
local k = 3
if ARGV[4] == '1' then
  idem = KEYS[k]
  k = k + 1
end
if ARGV[5] == '1' then
  children = KEYS[k]
end
if idem then
  local existing = redis.call('GET', idem)
  if existing and existing ~= stale then
    return {0, existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('job ' .. id .. ' already exists')
end
if idem then
  redis.call('SET', idem, id)
end
if children then
  redis.call('SADD', children, id)
end

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('HSET', KEYS[1], 'id', id, 'state', state, 'created_at', now, unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], now_ms, id)
return {1, id, now}
