-- Settles a batch of admitted requests in one call. Each frees its parallel lease and
-- replaces its reservation by what it really used. With `cancel` = 1 the request was
-- never sent: its admission leaves the RPM log too, so it consumed nothing (SPEC §12).
-- KEYS: per settlement, 7 per subject: req, tok, toksum, resv, par, spend, rcost
-- ARGV: m (settlements), then 7 per settlement:
--       n (subjects), request_id, reserved_tokens, reserved_cost, tokens, cost, cancel
-- Returns m.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = tonumber(ARGV[1])
local base = 0
for j = 0, m - 1 do
  local a = 2 + j * 7
  local n = tonumber(ARGV[a])
  local request_id = ARGV[a + 1]
  local reserved_tokens = tonumber(ARGV[a + 2])
  local reserved_cost = tonumber(ARGV[a + 3])
  local tokens = tonumber(ARGV[a + 4])
  local cost = tonumber(ARGV[a + 5])
  local cancel = ARGV[a + 6] == '1'
  for i = 0, n - 1 do
    local k = base + i * 7
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
  base = base + n * 7
end
return m
