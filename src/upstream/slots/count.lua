-- Reads how many shared slots of a (server, loaded model) are held, lapsed ones pruned.
-- KEYS: leases, version
-- Returns {count, version}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
return {n, v}
