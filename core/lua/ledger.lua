-- ledger.lua: the credits ledger's moves, included (--! include ledger) by the scripts that write a job's
-- credits in the same step as its record or state: job_create (reserve), job_transition (charge, release,
-- settle on the upstream's figure) and job_discard (release).
--
-- Amounts are centi-credits (integers: sums stay exact). A job's credits are written under the UTC day and
-- month it was enqueued (its ``lday``), so a move after midnight lands where its reservation was.
-- L is {day, month, total, batch} (keys; batch only for a batch's job); who is {principal, model, batch,
-- workflow, account} ('' when none; the account only once known). Fields: see Keys.ledger_day.

local function ledger_add(L, kind, amount, who, ttl)
  if amount == 0 then
    return
  end
  local p = kind .. '|' .. who.principal .. '|'
  redis.call('HINCRBY', L.day, p .. 't', amount)
  redis.call('HINCRBY', L.day, kind .. '|*|t', amount)
  redis.call('HINCRBY', L.day, p .. 'm:' .. who.model, amount)
  if who.batch ~= '' then
    redis.call('HINCRBY', L.day, p .. 'b:' .. who.batch, amount)
    redis.call('HINCRBY', L.batch, kind, amount)
    if redis.call('TTL', L.batch) < 0 then
      redis.call('EXPIRE', L.batch, ttl)
    end
  end
  if who.workflow ~= '' then
    redis.call('HINCRBY', L.day, p .. 'w:' .. who.workflow, amount)
  end
  if who.account ~= '' then
    redis.call('HINCRBY', L.day, p .. 'a:' .. who.account, amount)
    redis.call('HINCRBY', L.total, kind .. '|*|a:' .. who.account, amount)
  end
  redis.call('HINCRBY', L.month, p .. 't', amount)
  redis.call('HINCRBY', L.month, kind .. '|*|t', amount)
  redis.call('HINCRBY', L.total, kind .. '|*|m:' .. who.model, amount)
  redis.call('HINCRBY', L.total, kind .. '|*|t', amount)
  for _, key in ipairs({L.day, L.month}) do
    if redis.call('TTL', key) < 0 then
      redis.call('EXPIRE', key, ttl)
    end
  end
end

-- Who a stored job's credits belong to, read from its record (HMGET job owner model batch_id workflow_id
-- account); the principal of a job without an owner (the Python API, the CLI) is '-'.
local function ledger_who(job)
  local f = redis.call('HMGET', job, 'owner', 'model', 'batch_id', 'workflow_id', 'account')
  return {principal = f[1] or '-', model = f[2] or 'text-to-video', batch = f[3] or '', workflow = f[4] or '',
    account = f[5] or ''}
end

-- Reserve ``amount`` for a new job (or a new attempt) when every budget with a limit has room for it:
-- limits = {principal_day, principal_month, batch, global_day} (centi-credits; nil = none). A budget's use is
-- what it has charged and reserved. Crossing ``warn`` (a fraction) of a limit posts one ``budget.warning``
-- to the events stream (once per budget and period: a ``warned|`` field beside the totals).
-- Returns nil when reserved; {2, budget, limit, charged, reserved} (nothing written) when one has no room.
local function ledger_reserve(L, who, amount, limits, warn, events, maxlen, ttl, now)
  local p = who.principal
  local budgets = {
    {'principal_day', L.day, 'c|' .. p .. '|t', 'r|' .. p .. '|t'},
    {'principal_month', L.month, 'c|' .. p .. '|t', 'r|' .. p .. '|t'},
    {'batch', L.batch, 'c', 'r'},
    {'global_day', L.day, 'c|*|t', 'r|*|t'},
  }
  local used = {}
  for i, budget in ipairs(budgets) do
    local limit = limits[i]
    if limit and (i ~= 3 or who.batch ~= '') then
      local v = redis.call('HMGET', budget[2], budget[3], budget[4])
      local charged, reserved = tonumber(v[1]) or 0, tonumber(v[2]) or 0
      if charged + reserved + amount > limit then
        return {2, budget[1], limit, charged, reserved}
      end
      used[i] = charged + reserved
    end
  end
  ledger_add(L, 'r', amount, who, ttl)
  for i, before in pairs(used) do
    local limit = limits[i]
    local mark = warn * limit
    if before < mark and before + amount >= mark then
      local flag = 'warned|' .. budgets[i][1] .. '|' .. (i == 4 and '*' or p)
      if redis.call('HSETNX', budgets[i][2], flag, now) == 1 then
        redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'budget.warning', 'job', '',
          'batch', i == 3 and who.batch or '', 'owner', (i == 4 or p == '-') and '' or p, 'at', now,
          'budget', budgets[i][1], 'limit', string.format('%.2f', limit / 100),
          'used', string.format('%.2f', (before + amount) / 100))
      end
    end
  end
  return nil
end
