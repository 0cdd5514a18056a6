-- balance_record.lua: an account's balance as just read from the upstream (chat/credit).
--
-- KEYS[1]  balance  hash        credits (as read), at (ms), spent (centi-credits charged since), low ('1')
-- KEYS[2]  events   stream      <prefix>:events
-- ARGV[1]  the credits read
-- ARGV[2]  the centi-credits ``spent`` held just before the upstream was asked (those charges are in the
--          figure read: they are taken off ``spent``; charges made since stay)
-- ARGV[3]  the low-balance threshold (credits)
-- ARGV[4]  the account's name
-- ARGV[5]  the events stream's approximate maximum length
-- Effects: HSET credits and at (Redis TIME), HINCRBY spent -ARGV[2]; a balance that falls below the threshold
--   posts one ``account.low_balance`` event (the ``low`` flag stops a second until it is back above).
-- Returns 1 when the event was posted, else 0.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local credits, threshold = tonumber(ARGV[1]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'credits', ARGV[1], 'at', now_ms)
redis.call('HINCRBY', KEYS[1], 'spent', 0 - tonumber(ARGV[2])) -- never '-0', which HINCRBY refuses
if credits >= threshold then
  redis.call('HDEL', KEYS[1], 'low')
  return 0
end
if redis.call('HSETNX', KEYS[1], 'low', '1') == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'account.low_balance', 'job', '', 'batch', '',
  'owner', '', 'at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])), 'account', ARGV[4], 'balance', ARGV[1],
  'threshold', ARGV[3])
return 1
