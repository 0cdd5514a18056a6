-- job_create.lua: write a new job's record, or return the job an idempotency key already names.
--
-- Key layout (all passed in, see core/keys.py):
--   KEYS[1]  job hash         <prefix>:job:<id>        the record; field names = Job attributes
--   KEYS[2]  state index      <prefix>:state:<state>   sorted set, member = job id, score = ms entered
--   then     idempotency key  <prefix>:idem:<key>      string = job id; only when ARGV[4] is '1'
--   then     children set     <prefix>:children:<parent>  only when ARGV[5] is '1'
--   then     ledger keys: day, month, total, batch hash, events stream (Keys.ledger_*)  only when ARGV[6] ~= ''
-- ARGV:
--   ARGV[1]  the new job id
--   ARGV[2]  '' normally; a job id the idempotency key may be taken over from (its record is gone)
--   ARGV[3]  its first state: queued, or waiting (a derived job whose parent is not stored yet)
--   ARGV[4]  '1' when the request has an idempotency key
--   ARGV[5]  '1' when the job waits for its parent (it joins the parent's children set)
--   ARGV[6]  '' (no credits kept), or the job's estimate in centi-credits, then ARGV[7..18]: the ledger's TTL s,
--            the principal ('-' when none), model, batch id, workflow id ('' when none), the limits of the
--            budgets principal_day, principal_month, batch, global_day (centi-credits, '' = none), the warning
--            fraction, the events stream's approximate maximum length, the ledger day (YYYY-MM-DD) the keys
--            name and when it starts (epoch s): a job created on another day by the Redis clock (midnight, a
--            skewed host) keeps its day in ``lday``; otherwise its day is that of its created_at
--   then     field, value pairs of the request (never id, state or created_at)
-- Effects: when every budget has room (ledger.lua: ledger_reserve), reserve the estimate in the ledger and
--   SET idempotency key (no expiry while the job lives); HSET id, state, created_at (Redis
--   TIME, float seconds) and the request fields; ZADD the id to its state's index; SADD it to its
--   parent's children set. The job's submit message
--   is pushed by the caller once every record of its call is written (JobStore.create_many), so a call's
--   jobs can be taken back whole (job_discard.lua) before any worker knows them.
-- Returns:
--   {1, id, created_at}  created
--   {0, existing_id}     the idempotency key already names this job; nothing written
--   {2, budget, limit, charged, reserved}  a budget has no room for the estimate; nothing written

--! include ledger

local id, stale, state = ARGV[1], ARGV[2], ARGV[3]
local idem, children
local k = 3
if ARGV[4] == '1' then
  idem = KEYS[k]
  k = k + 1
end
if ARGV[5] == '1' then
  children = KEYS[k]
  k = k + 1
end
local estimate = tonumber(ARGV[6])
local first_field = estimate and 20 or 7
if idem then
  local existing = redis.call('GET', idem)
  if existing and existing ~= stale then
    return {0, existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('job ' .. id .. ' already exists')
end

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if estimate then
  local L = {day = KEYS[k], month = KEYS[k + 1], total = KEYS[k + 2], batch = KEYS[k + 3]}
  local who = {principal = ARGV[8], model = ARGV[9], batch = ARGV[10], workflow = ARGV[11], account = ''}
  local limits = {tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])}
  local refused = ledger_reserve(L, who, estimate, limits, tonumber(ARGV[16]), KEYS[k + 4], ARGV[17],
    tonumber(ARGV[7]), now)
  if refused then
    return refused
  end
end
if idem then
  redis.call('SET', idem, id)
end
if children then
  redis.call('SADD', children, id)
end

redis.call('HSET', KEYS[1], 'id', id, 'state', state, 'created_at', now, unpack(ARGV, first_field))
if estimate then
  local day_start = tonumber(ARGV[19])
  if tonumber(t[1]) < day_start or tonumber(t[1]) >= day_start + 86400 then
    redis.call('HSET', KEYS[1], 'lday', ARGV[18])
  end
end
redis.call('ZADD', KEYS[2], now_ms, id)
return {1, id, now}
