-- Frees one shared slot and tells every instance how many remain held.
-- KEYS: leases, version
-- ARGV: lease_id, channel, server, model
-- Returns {count, version}; publishes "server\tmodel\tcount\tversion" on the channel.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\t' .. ARGV[4] .. '\t' .. n .. '\t' .. v)
return {n, v}
