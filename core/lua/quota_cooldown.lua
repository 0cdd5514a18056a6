-- quota_cooldown.lua: start (or keep) an account's cooldown after an upstream 429/455.
--
-- KEYS[1]  cooldown  string  cooldown end ms (limiter clock), with a PX expiry to clean up after itself
-- KEYS[2]  backoff   string  consecutive cooldowns without a success in between (PX expiry ARGV[5])
-- ARGV[1]  now ms: '' in production (redis.call('TIME')); a number only from a test clock (test seam)
-- ARGV[2]  Retry-After ms, or '' to back off exponentially
-- ARGV[3]  first backoff step ms (doubles per consecutive cooldown)
-- ARGV[4]  longest backoff ms
-- ARGV[5]  backoff counter lifetime ms
-- The counter grows only when no cooldown is running: requests already in flight when the first 429
-- came back all get 429s too, and they must not compound the backoff.
-- A cooldown is never shortened. Returns the cooldown now in force, in ms from now (0 if none).

local now, slack = tonumber(ARGV[1]), 0
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  slack = 3600000 -- a test clock runs apart from Redis's: keep the key from expiring early
end
local current_end = tonumber(redis.call('GET', KEYS[1])) or 0
local streak = tonumber(redis.call('GET', KEYS[2])) or 0
if current_end <= now then
  streak = streak + 1
  redis.call('SET', KEYS[2], streak, 'PX', tonumber(ARGV[5]))
end

local duration = tonumber(ARGV[2])
if not duration then
  duration = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ (math.max(streak, 1) - 1))
end
duration = math.max(0, duration)

local new_end = now + duration
if duration > 0 and new_end > current_end then
  redis.call('SET', KEYS[1], string.format('%d', new_end), 'PX', string.format('%d', duration + slack))
  return duration
end
return math.max(0, current_end - now)
