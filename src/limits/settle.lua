-- Settles one admitted request: frees its parallel lease, replaces its reservation by
-- what it really used. With `cancel` = 1 the request was never sent: its admission
-- leaves the RPM log too, so it consumed nothing (SPEC §12).
-- KEYS: 7 per subject: req, tok, toksum, resv, par, spend, rcost
-- ARGV: n, request_id, reserved_tokens, reserved_cost, tokens, cost, cancel
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local request_id = ARGV[2]
local reserved_tokens = tonumber(ARGV[3])
local reserved_cost = tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local cancel = ARGV[7] == '1'
for i = 0, n - 1 do
  local k = i * 7
  redis.call('ZREM', KEYS[k + 5], request_id)
  if cancel then
    redis.call('ZREM', KEYS[k + 1], request_id)
  end
  if reserved_tokens > 0 then
    local left = redis.call('DECRBY', KEYS[k + 4], reserved_tokens)
    if left < 0 then redis.call('SET', KEYS[k + 4], 0, 'KEEPTTL') end
  end
  if reserved_cost > 0 then
    local left = tonumber(redis.call('INCRBYFLOAT', KEYS[k + 7], -reserved_cost))
    if left < 0 then redis.call('SET', KEYS[k + 7], 0, 'KEEPTTL') end
  end
  if tokens > 0 then
    -- The token sum is rebuilt from the log when missing, so only add to an existing one.
    redis.call('ZADD', KEYS[k + 2], now, request_id .. ':' .. tokens)
    redis.call('PEXPIRE', KEYS[k + 2], 61000)
    if redis.call('EXISTS', KEYS[k + 3]) == 1 then
      redis.call('INCRBY', KEYS[k + 3], tokens)
      redis.call('PEXPIRE', KEYS[k + 3], 61000)
    end
  end
  if cost > 0 and redis.call('EXISTS', KEYS[k + 6]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[k + 6], cost)
  end
end
return 0
