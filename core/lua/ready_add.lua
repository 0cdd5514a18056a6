-- ready_add.lua: new queued jobs of one pool enter its ready set, each with its fair-share tag.
--
-- Fair share is start-time fair queueing per priority step: a job of principal p gets the start tag
-- S = max(V, F[p]), where V is the step's virtual time (the tag of the last job dispatched from it) and
-- F[p] the finish tag of p's previous job (S + 1/weight). Jobs are served by the lowest tag, so principals
-- share the creations by weight, and one that arrives with nothing queued starts at V: at the front.
--
-- KEYS[1]  ready set        sorted set  member = job id, score = rank = step * STEP + S
-- KEYS[2]  meta             hash        job id -> "principal<TAB>step<TAB>created ms<TAB>pin<TAB>estimate"
-- KEYS[3]  fair             hash        "V:<step>" -> V, "F:<step>:<principal>" -> F[p]
-- KEYS[4]  age              sorted set  the jobs below interactive priority, score = created ms (aging)
-- KEYS[5]  waiting          sorted set  every ready job, score 0, member "principal|created ms|job id"
-- KEYS[6]  dispatch wakes   list
-- KEYS[6+i]                 the job hash of job i (its rank is written there, for a later re-queue)
-- ARGV[1]  STEP (a step's weight in the rank)
-- ARGV[2]  n, then 6 per job: id, step (0 = interactive), principal, weight, created ms, and its place:
--          "pin<TAB>estimate" (pin '' = any account; estimate in centi-credits, '' = unknown: core.messages)
-- Returns the ranks given, in order.

local ready, meta, fair, age, waiting, wakes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local step_weight = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local ranks = {}
for i = 0, n - 1 do
  local a = 3 + 6 * i
  local id, step, principal = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local weight, created, pin = tonumber(ARGV[a + 3]), ARGV[a + 4], ARGV[a + 5]
  local v = tonumber(redis.call('HGET', fair, 'V:' .. step)) or 0
  local f_field = 'F:' .. step .. ':' .. principal
  local start = math.max(v, tonumber(redis.call('HGET', fair, f_field)) or 0)
  redis.call('HSET', fair, f_field, start + 1 / weight)
  local rank = step * step_weight + start
  -- six decimals, trailing zeros dropped ('17', not '17.000000'): every queued record keeps it
  local text = string.gsub(string.gsub(string.format('%.6f', rank), '0+$', ''), '%.$', '')
  redis.call('HSET', KEYS[7 + i], 'rank', text)
  redis.call('ZADD', ready, text, id)
  redis.call('HSET', meta, id, principal .. '\t' .. step .. '\t' .. created .. '\t' .. pin)
  if step > 0 then
    redis.call('ZADD', age, created, id)
  end
  redis.call('ZADD', waiting, 0, principal .. '|' .. created .. '|' .. id)
  ranks[i + 1] = text
end
if n > 0 then
  for _ = 1, math.min(n, 64) do
    redis.call('LPUSH', wakes, '1')
  end
  redis.call('LTRIM', wakes, 0, 63)
  redis.call('PEXPIRE', wakes, 60000)
end
return ranks
