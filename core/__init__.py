"""The domain that producers and workers share: jobs and their store, keys, the Redis clients and Lua
scripts, the error tree, events, replication, quotas and Redis's memory budget."""
