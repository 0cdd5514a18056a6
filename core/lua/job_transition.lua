-- job_transition.lua: compare-and-set a job's state; the one way any state changes after creation.
--
-- The transition table lives in Python (core/jobs.py): the caller passes the states the job may be in
-- (those allowed to move to the target, narrowed by the caller's expectation); this script hard-codes none.
--
-- KEYS (all passed in, see core/keys.py):
--   KEYS[1]        job hash             <prefix>:job:<id>
--   KEYS[2]        target state index   <prefix>:state:<to>   sorted set, member = id, score = ms entered
--   KEYS[2+i]      state index of ARGV[6+i], i = 1..n (the job is removed from the one it is in)
--   KEYS[3+n]      idempotency key      <prefix>:idem:<key>   only when ARGV[5] ~= ''
--   then           task index key       <prefix>:task:<tid>   only when the fields set task_id
-- ARGV:
--   ARGV[1]  job id
--   ARGV[2]  target state
--   ARGV[3]  terminal TTL s: > 0 when the target is terminal (EXPIRE the hash and idempotency key);
--            0 otherwise (a job leaving a terminal state loses its expiry: PERSIST)
--   ARGV[4]  task index TTL s (applied when the fields set task_id)
--   ARGV[5]  the job's idempotency key as the caller read it ('' = none). Required whenever expiry changes
--            (target terminal, or the job currently has a TTL); checked against the record.
--   ARGV[6]  n, then ARGV[6+1..6+n] the states the job may be in now
--   then     s, then s pairs field, value to HSET
--   then     d, then d field names to HDEL
--   then     c, then c pairs field, increment to HINCRBY
--   then     e: 1 when the target is terminal and an event is to be recorded, then the stream's
--            approximate maximum length; the stream is then the LAST key ( <prefix>:events ); else 0
--   then     r: 1 when the job's ready set changes with this move, then: '1' when the job enters it ('' = it
--            leaves it, and the dispatched set), its rank when the record has none, its principal, step,
--            created ms (13 digits) and place (pin<TAB>estimate: core.messages.ready_place); the ready set, the dispatch wake list, the pool's
--            meta, the dispatched set, the pool's age set and the waiting set are then the six keys after
--            the task index key (ready_add.lua describes them); else 0
--   then     l: 1 when the job's credits may move (ledger.lua), then: '1' to charge the estimate even though the
--            target is not ``generating`` (createTask's outcome unknown: the task may exist and cost), the
--            upstream's own figure for the task in centi-credits ('' = none), the ledger's TTL s, the account
--            whose balance keys are passed ('' = none: they are placeholders, never touched); the
--            ledger's day, month, total and batch keys, the balance hash and holds of the job's account
--            (Keys.balance, balance_holds) then follow the ready keys (or the task index key)
-- Effects (all or nothing): state = target, at_<target> and updated_at = Redis TIME (float s), the fields;
--   the id moves from its current state index to the target's (score = ms); task index SET EX when task_id
--   is written; expiry as above; a job entering ``queued`` is added to its pool's ready set (and one wake
--   posted for the submitters waiting there), one leaving it is removed; for a terminal target, an entry ``type job.<to>, job, batch, owner, at``
--   added to the events stream in the same step (so no job ends without its event). Credits (job fields
--   ``estimate``, ``credits``, ``charged``): a reserved estimate is charged when the job enters
--   ``generating`` (its task exists), released when it ends without one; a charge is settled once on the
--   upstream's figure when one is given.
-- Returns: 1 done; 0 refused (job missing, or its state not among ARGV[7..6+n]) with nothing written.

--! include ledger

local job, id, to = KEYS[1], ARGV[1], ARGV[2]
-- (the events stream, when given, is the last key)
local ttl, task_ttl, idem = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n = tonumber(ARGV[6])

local state = redis.call('HGET', job, 'state')
if not state then
  return 0
end
local from_index
for i = 1, n do
  if ARGV[6 + i] == state then
    from_index = KEYS[2 + i]
    break
  end
end
if not from_index then
  return 0
end

local volatile = redis.call('TTL', job) >= 0
local stored_idem = redis.call('HGET', job, 'idempotency_key') or ''
local k = 3 + n
local idem_key
if idem ~= '' then
  if idem ~= stored_idem then
    return redis.error_reply('job ' .. id .. ': idempotency key passed does not match the record')
  end
  idem_key = KEYS[k]
  k = k + 1
elseif stored_idem ~= '' and (ttl > 0 or volatile) then
  return redis.error_reply('job ' .. id .. ': expiry changes but its idempotency key was not passed')
end

local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local a = 7 + n
local s = tonumber(ARGV[a])
local set = {'state', to, 'at_' .. to, now, 'updated_at', now}
local task_key_used = false
for i = a + 1, a + 2 * s, 2 do
  set[#set + 1] = ARGV[i]
  set[#set + 1] = ARGV[i + 1]
  if ARGV[i] == 'task_id' then
    redis.call('SET', KEYS[k], id, 'EX', task_ttl)
    task_key_used = true
  end
end
if task_key_used then
  k = k + 1
end
redis.call('HSET', job, unpack(set))
a = a + 2 * s + 1
local d = tonumber(ARGV[a])
if d > 0 then
  redis.call('HDEL', job, unpack(ARGV, a + 1, a + d))
end
a = a + d + 1
local c = tonumber(ARGV[a])
for i = a + 1, a + 2 * c, 2 do
  redis.call('HINCRBY', job, ARGV[i], ARGV[i + 1])
end
a = a + 2 * c + 1
if tonumber(ARGV[a] or '0') == 1 then
  local about = redis.call('HMGET', job, 'batch_id', 'owner')
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[a + 1], '*', 'type', 'job.' .. to, 'job', id,
    'batch', about[1] or '', 'owner', about[2] or '', 'at', now)
  a = a + 2
else
  a = a + 1
end
if tonumber(ARGV[a] or '0') == 1 then
  local ready, wakes, meta, dispatched, age, waiting = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]
  local held = redis.call('HGET', meta, id)
  if held then -- out of the ready set first (also before re-entering it)
    local principal, _, created = string.match(held, '^([^\t]*)\t([^\t]*)\t([^\t]*)')
    redis.call('ZREM', waiting, principal .. '|' .. created .. '|' .. id)
    redis.call('HDEL', meta, id)
  end
  redis.call('ZREM', ready, id)
  redis.call('ZREM', age, id)
  redis.call('ZREM', dispatched, id)
  if ARGV[a + 1] == '1' then
    local rank = redis.call('HGET', job, 'rank') or ARGV[a + 2]
    local principal, step, created = ARGV[a + 3], tonumber(ARGV[a + 4]), ARGV[a + 5]
    redis.call('ZADD', ready, rank, id)
    redis.call('HSET', meta, id, principal .. '\t' .. step .. '\t' .. created .. '\t' .. ARGV[a + 6])
    if step > 0 then
      redis.call('ZADD', age, created, id)
    end
    redis.call('ZADD', waiting, 0, principal .. '|' .. created .. '|' .. id)
    redis.call('LPUSH', wakes, '1')
    redis.call('LTRIM', wakes, 0, 63)
    redis.call('PEXPIRE', wakes, 60000)
  end
  k = k + 6
  a = a + 7
else
  a = a + 1
end
if tonumber(ARGV[a] or '0') == 1 then
  local force, figure, ledger_ttl = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local keyed_account = ARGV[a + 4]
  local f = redis.call('HMGET', job, 'estimate', 'credits', 'charged')
  local estimate = tonumber(f[1])
  if estimate then
    estimate = math.floor(estimate * 100 + 0.5)
    local L = {day = KEYS[k], month = KEYS[k + 1], total = KEYS[k + 2], batch = KEYS[k + 3]}
    local balance, holds = KEYS[k + 4], KEYS[k + 5]
    local who = ledger_who(job)
    local reserver = {principal = who.principal, model = who.model, batch = who.batch, workflow = who.workflow,
      account = ''}
    local credits, charged = f[2] or 'reserved', math.floor((tonumber(f[3]) or 0) * 100 + 0.5)
    if credits == 'reserved' and (to == 'generating' or force == '1') then
      ledger_add(L, 'r', -estimate, reserver, ledger_ttl)
      ledger_add(L, 'c', estimate, who, ledger_ttl)
      credits, charged = 'charged', estimate
      redis.call('HSET', job, 'credits', credits, 'charged', string.format('%.2f', charged / 100))
      if who.account ~= '' and who.account == keyed_account then -- its hold becomes a charge on the balance
        redis.call('ZREM', holds, id)
        redis.call('HINCRBY', balance, 'spent', estimate)
      end
    elseif credits == 'reserved' and ttl > 0 then
      ledger_add(L, 'r', -estimate, reserver, ledger_ttl)
      redis.call('HSET', job, 'credits', 'released')
    end
    if who.account ~= '' and who.account == keyed_account and ttl > 0 then
      redis.call('ZREM', holds, id)
    end
    if figure and credits == 'charged' then
      ledger_add(L, 'c', figure - charged, who, ledger_ttl)
      if who.account ~= '' and who.account == keyed_account then
        redis.call('HINCRBY', balance, 'spent', figure - charged)
      end
      redis.call('HSET', job, 'credits', 'settled', 'charged', string.format('%.2f', figure / 100))
    end
  end
end

redis.call('ZREM', from_index, id)
redis.call('ZADD', KEYS[2], now_ms, id)
if ttl > 0 then
  redis.call('EXPIRE', job, ttl)
  if idem_key then
    redis.call('EXPIRE', idem_key, ttl)
  end
elseif volatile then
  redis.call('PERSIST', job)
  if idem_key then
    redis.call('PERSIST', idem_key)
  end
end
return 1
