-- poll_plan.lua: an account's poll plan, the calendar of recordInfo checks shared by every poll worker.
--
-- The account's recordInfo budget is cut into slots ARGV[5] ms apart (its rolling window ÷ its calls per
-- window); a slot holds at most one job's next check. A job books the first free slot at or after the
-- time it may next be checked, so the budget goes round the tasks that may have finished, the one
-- checked longest ago first, and a finished task is seen within about (tasks booked ÷ budget) seconds.
-- Each job's booking is owned by one poll message (its Celery task id, kept across re-publishes).
--
-- KEYS[1]  plan    sorted set  member = job id, score = its booked slot ms
-- KEYS[2]  owners  hash        job id -> the poll message that owns its booking
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  mode: 'turn' (a poll message runs: may it check now?) or 'book' (book the next check)
-- ARGV[3]  job id
-- ARGV[4]  message id
-- ARGV[5]  slot spacing ms (may be fractional)
-- ARGV[6]  not before: 'turn' an absolute ms (the job's first plausible completion), 'book' a delay ms
-- ARGV[7]  'turn': how overdue (ms) another message's booking must be before this one takes it over
-- ARGV[8]  'turn': how early (ms) a booked check may still run (clocks of workers and Redis differ a little)
-- Returns {code, wait_ms}:
--   {'go', 0}          check now: the booking is taken off the calendar (the message still owns the job)
--   {'wait', ms}       re-run this message in ms: its booking (made now if it had none) is then due
--   {'duplicate', 0}   another live message owns this job's checks: this one stops

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local plan, owners = KEYS[1], KEYS[2]
local mode, job, message = ARGV[2], ARGV[3], ARGV[4]
local spacing = tonumber(ARGV[5])

-- Slot k starts at ceil(k * spacing) ms; the first slot at or after `from` not booked by another job.
-- The slot now is in counts as used (its check may just have been made, and left the calendar).
local function book(from)
  redis.call('ZREM', plan, job)
  local k = math.max(math.ceil(from / spacing), math.floor(now / spacing) + 1)
  local taken = redis.call('ZRANGEBYSCORE', plan, math.ceil(k * spacing), '+inf', 'WITHSCORES')
  for i = 2, #taken, 2 do
    local slot = math.floor(tonumber(taken[i]) / spacing)
    if slot == k then
      k = k + 1
    elseif slot > k then
      break
    end
  end
  local at = math.ceil(k * spacing)
  redis.call('ZADD', plan, at, job)
  redis.call('HSET', owners, job, message)
  return at
end

if mode == 'book' then
  return {'wait', book(now + tonumber(ARGV[6])) - now}
end

local booked = tonumber(redis.call('ZSCORE', plan, job))
if not booked then
  booked = book(math.max(now, tonumber(ARGV[6])))
elseif redis.call('HGET', owners, job) ~= message then
  if booked > now - tonumber(ARGV[7]) then
    return {'duplicate', 0}
  end
  redis.call('HSET', owners, job, message) -- its owner missed its turn by far: lost; this one goes on
end
if booked > now + tonumber(ARGV[8]) then
  return {'wait', booked - now}
end
redis.call('ZREM', plan, job)
return {'go', 0}
