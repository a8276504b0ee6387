-- Claims one shared slot of a (server, loaded model) for every instance together.
-- KEYS: leases (sorted set: lease id -> expiry ms), version (a counter)
-- ARGV: lease_id, parallel, lease_ms
-- Returns {1, count, version} granted (count includes this lease); {0, count, version} full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local parallel = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
-- A crashed instance's leases lapse at their expiry.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local v = redis.call('INCR', KEYS[2])
if n >= parallel then
  return {0, n, v}
end
redis.call('ZADD', KEYS[1], now + lease_ms, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease_ms + 60000)
return {1, n + 1, v}
