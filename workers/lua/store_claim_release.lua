-- store_claim_release.lua: give up a store claim, but only the caller's own (a claim that lapsed while
-- its heartbeat was stalled may belong to another store by now). GET and DEL in one step.
--
-- KEYS[1]  the claim    string  the token of the store that holds it
-- ARGV[1]  the caller's token
-- Returns 1 if the claim was the caller's and is gone, 0 otherwise.

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
