-- workflow_done.lua: record a workflow's end and its event, once.
--
-- Every node's end makes some release thread look at the workflow; when all nodes are terminal, several
-- may find it at once. The first to run this records it; the others change nothing.
--
-- KEYS[1]  workflow hash   <prefix>:workflow:<id>
-- KEYS[2]  events stream   <prefix>:events
-- ARGV[1]  the workflow id
-- ARGV[2]  its state (completed, partly_failed, failed)
-- ARGV[3]  the stream's approximate maximum length
-- ARGV[4]  seconds the ended workflow's record is kept
-- Effects: when the hash exists and has no completed_at: HSET completed_at (Redis TIME) and state, EXPIRE
--   it, and XADD ``type workflow.completed, job '', batch '', owner, workflow, state, at``.
-- Returns 1 when recorded now, 0 otherwise.

if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'completed_at') == 1 then
  return 0
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], 'completed_at', now, 'state', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'workflow.completed', 'job', '', 'batch', '',
  'owner', owner, 'workflow', ARGV[1], 'state', ARGV[2], 'at', now)
return 1
