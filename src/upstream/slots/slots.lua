-- Frees and claims shared slots of (server, loaded model) pairs for every instance
-- together, in one call: the releases first (what they free may serve the claims), then
-- the claims, then one message telling every instance how many slots the releases left.
-- KEYS: two per operation, releases then acquires: leases (sorted set: lease id ->
--       expiry ms), version (a counter bumped by every operation)
-- ARGV: releases, acquires, lease_ms, channel, then per release: lease_id, server, model;
--       per acquire: lease_id, parallel
-- Returns, flat: per release {count, version}; per acquire {granted (1|0), count,
-- version}, where a granted count includes the new lease. Publishes
-- "server\tmodel\tcount\tversion" lines (one per pair released, its last count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local releases = tonumber(ARGV[1])
local acquires = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local out = {}
local freed = {}
local order = {}
local a = 5
for i = 1, releases do
  local leases, version = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZREM', leases, ARGV[a])
  -- A crashed instance's leases lapse at their expiry.
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local n = redis.call('ZCARD', leases)
  local v = redis.call('INCR', version)
  out[#out + 1] = n
  out[#out + 1] = v
  if freed[leases] == nil then
    order[#order + 1] = leases
  end
  freed[leases] = ARGV[a + 1] .. '\t' .. ARGV[a + 2] .. '\t' .. n .. '\t' .. v
  a = a + 3
end
for i = releases + 1, releases + acquires do
  local leases, version = KEYS[2 * i - 1], KEYS[2 * i]
  local parallel = tonumber(ARGV[a + 1])
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local n = redis.call('ZCARD', leases)
  local v = redis.call('INCR', version)
  if n >= parallel then
    out[#out + 1] = 0
    out[#out + 1] = n
  else
    redis.call('ZADD', leases, now + lease_ms, ARGV[a])
    redis.call('PEXPIRE', leases, lease_ms + 60000)
    out[#out + 1] = 1
    out[#out + 1] = n + 1
  end
  out[#out + 1] = v
  a = a + 2
end
if #order > 0 then
  local lines = {}
  for _, leases in ipairs(order) do
    lines[#lines + 1] = freed[leases]
  end
  redis.call('PUBLISH', ARGV[4], table.concat(lines, '\n'))
end
return out
