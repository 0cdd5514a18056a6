-- ledger_reattempt.lua: reserve a failed job's new attempt in the ledger, under its budgets, before it is
-- queued again (a resubmit). The job's own move back to ``queued`` follows (job_transition.lua); should it
-- not happen, the job's end releases what is reserved here.
--
-- KEYS[1]  job hash
-- KEYS[2..5]  the ledger's day, month, total and batch keys for today (Keys.ledger_*)
-- KEYS[6]  events stream
-- ARGV[1]  the attempt's estimate (centi-credits)
-- ARGV[2]  today (YYYY-MM-DD), the attempt's ledger day
-- ARGV[3]  the ledger's TTL s
-- ARGV[4..7]  the limits of principal_day, principal_month, batch, global_day (centi-credits, '' = none)
-- ARGV[8]  the warning fraction, ARGV[9] the events stream's approximate maximum length
-- Effects: when the job is failed and every budget has room (ledger.lua: ledger_reserve): the estimate is
--   reserved, the record's estimate, lday set and its credits state and charge cleared (the attempt before
--   stays charged in the ledger).
-- Returns {1} reserved; {0} the job is not failed (nothing written); {2, budget, limit, charged, reserved}.

--! include ledger

if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then
  return {0}
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local who = ledger_who(KEYS[1])
who.account = ''
local L = {day = KEYS[2], month = KEYS[3], total = KEYS[4], batch = KEYS[5]}
local amount = tonumber(ARGV[1])
local limits = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}
local refused = ledger_reserve(L, who, amount, limits, tonumber(ARGV[8]), KEYS[6], ARGV[9], tonumber(ARGV[3]), now)
if refused then
  return refused
end
redis.call('HSET', KEYS[1], 'estimate', string.format('%.2f', amount / 100), 'lday', ARGV[2])
redis.call('HDEL', KEYS[1], 'credits', 'charged')
return {1}
