-- auth_failure.lua: count one failed sign-in (or unknown bearer token) of a client address.
--
-- KEYS[1]  bucket  hash  tokens = failures still allowed (float), ts = the last failure's time ms;
--                        PEXPIRE'd once a full refill has passed (a missing bucket is a full one)
-- ARGV[1]  refill rate, failures per second
-- ARGV[2]  bucket size (failures allowed at once)
-- Effects: takes one token (none when empty).
-- Returns a string (a Lua number would be truncated): "0" while failures are still allowed, else the
-- seconds until the next one is (the caller locks the address out for that long).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if not tokens or not ts then
  tokens, ts = burst, now
end
tokens = math.max(0, math.min(burst, tokens + math.max(0, now - ts) * rate / 1000) - 1)
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', string.format('%d', math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if tokens >= 1 then
  return '0'
end
return tostring((1 - tokens) / rate)
