-- token_lock_release.lua: give up a token lock (a store claim, a batch read or finalise claim, the
-- reconciler's run lock), but only the caller's own: a lock that lapsed while its holder stalled may
-- belong to someone else by now. GET and DEL in one step.
--
-- KEYS[1]  the lock    string  the token of whoever holds it
-- ARGV[1]  the caller's token
-- Returns 1 if the lock was the caller's and is gone, 0 otherwise.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
