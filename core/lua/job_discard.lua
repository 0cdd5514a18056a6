-- job_discard.lua: take back a job job_create.lua wrote, while it is still as created: a
-- request that created several jobs failed part-way, and its jobs are kept all together or not at all.
--
-- KEYS[1]  job hash         <prefix>:job:<id>
-- KEYS[2]  state index      <prefix>:state:<queued|waiting>  of the state it was created in
-- KEYS[3]  broker queue     <prefix>:celery:submit[:<step>]  where its submit message was pushed
-- KEYS[4]  ready set        <prefix>:ready:<pool>  the job's pool's (it is there once its message is)
-- KEYS[5]  meta             <prefix>:ready:<pool>:meta
-- KEYS[6]  age              <prefix>:ready:<pool>:age
-- KEYS[7]  waiting          <prefix>:waiting
-- KEYS[8..11]  the ledger's day, month, total and batch keys of the job (Keys.ledger_*)
-- KEYS[12] idempotency key  <prefix>:idem:<key>  only when the job has one
-- ARGV[1]  the job id
-- ARGV[2]  its submit message as pushed ('' when none was)
-- ARGV[3]  the state it was created in (queued, or waiting for its parent)
-- ARGV[4]  the ledger's TTL s
-- Effects: only when the job is still in that state: give back its reserved credits (ledger.lua; skipped
--   on a Redis out of memory, where HINCRBY is refused: the reservation then stays, an over-count that
--   never lets a budget overshoot), LREM its message, DEL the record, ZREM it from the queued
--   index and its ready sets, and DEL the idempotency key when that still names it. Every command here
--   frees memory, so the script runs on a Redis that is out of memory (none of them is refused there).
-- Returns 1 when the job was taken back, 0 when it had moved on (a worker got to it: it stays).

--! include ledger

local id = ARGV[1]
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[3] then
  return 0
end
local estimate = tonumber(redis.call('HGET', KEYS[1], 'estimate'))
if estimate then
  local who = ledger_who(KEYS[1])
  who.account = ''
  local L = {day = KEYS[8], month = KEYS[9], total = KEYS[10], batch = KEYS[11]}
  pcall(ledger_add, L, 'r', -math.floor(estimate * 100 + 0.5), who, tonumber(ARGV[4]))
end
if ARGV[2] ~= '' then
  redis.call('LREM', KEYS[3], 1, ARGV[2])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[4], id)
local held = redis.call('HGET', KEYS[5], id)
if held then
  local principal, _, created = string.match(held, '^([^\t]*)\t([^\t]*)\t([^\t]*)')
  redis.call('ZREM', KEYS[7], principal .. '|' .. created .. '|' .. id)
  redis.call('HDEL', KEYS[5], id)
end
redis.call('ZREM', KEYS[6], id)
if KEYS[12] and redis.call('GET', KEYS[12]) == id then
  redis.call('DEL', KEYS[12])
end
return 1
