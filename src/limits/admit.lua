-- Atomic admission for one request against every subject (key, team).
-- KEYS: 7 per subject: req, tok, toksum, resv, par, spend, rcost
-- ARGV: n, request_id, reserve_tokens, reserve_cost, lease_ms,
--       then 6 per subject: rpm, tpm, parallel, budget, stored_spend, spend_ttl_ms
--       (-1 = no such limit)
-- Returns {0, 0} admitted; {1, 0} budget; {2, retry_after_ms} rate; {3, 0} parallel.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local cutoff = now - window
local n = tonumber(ARGV[1])
local request_id = ARGV[2]
local reserve_tokens = tonumber(ARGV[3])
local reserve_cost = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])

local function token_sum(tok, toksum)
  -- Drop settled token entries older than the window, keeping the running sum exact.
  local expired = redis.call('ZRANGEBYSCORE', tok, '-inf', cutoff)
  if #expired > 0 then
    local gone = 0
    for _, member in ipairs(expired) do
      gone = gone + tonumber(string.match(member, ':(%d+)$') or '0')
    end
    redis.call('ZREMRANGEBYSCORE', tok, '-inf', cutoff)
    if redis.call('EXISTS', toksum) == 1 then
      redis.call('DECRBY', toksum, gone)
    end
  end
  local sum = redis.call('GET', toksum)
  if not sum then
    sum = 0
    for _, member in ipairs(redis.call('ZRANGE', tok, 0, -1)) do
      sum = sum + tonumber(string.match(member, ':(%d+)$') or '0')
    end
    redis.call('SET', toksum, sum, 'PX', window + 1000)
  end
  return tonumber(sum)
end

-- Phase 1: check every subject; a refusal charges nothing.
for i = 0, n - 1 do
  local k = i * 7
  local a = 6 + i * 6
  local rpm = tonumber(ARGV[a])
  local tpm = tonumber(ARGV[a + 1])
  local parallel = tonumber(ARGV[a + 2])
  local budget = tonumber(ARGV[a + 3])
  local stored_spend = ARGV[a + 4]
  local spend_ttl = tonumber(ARGV[a + 5])

  redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', now)

  if budget >= 0 then
    local spent = redis.call('GET', KEYS[k + 6])
    if not spent then
      spent = stored_spend
      redis.call('SET', KEYS[k + 6], stored_spend, 'PX', spend_ttl)
    end
    local total = tonumber(spent) + tonumber(redis.call('GET', KEYS[k + 7]) or '0')
    if total >= budget or (reserve_cost > 0 and total + reserve_cost > budget) then
      return {1, 0}
    end
  end
  if rpm >= 0 and redis.call('ZCARD', KEYS[k + 1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[k + 1], 0, 0, 'WITHSCORES')
    local retry = window
    if oldest[2] then retry = tonumber(oldest[2]) + window - now end
    return {2, retry}
  end
  if tpm >= 0 then
    local used = token_sum(KEYS[k + 2], KEYS[k + 3]) + tonumber(redis.call('GET', KEYS[k + 4]) or '0')
    if used >= tpm or (reserve_tokens > 0 and used + reserve_tokens > tpm) then
      local oldest = redis.call('ZRANGE', KEYS[k + 2], 0, 0, 'WITHSCORES')
      local retry = window
      if oldest[2] then retry = tonumber(oldest[2]) + window - now end
      return {2, retry}
    end
  end
  if parallel >= 0 and redis.call('ZCARD', KEYS[k + 5]) >= parallel then
    return {3, 0}
  end
end

-- Phase 2: charge every subject.
for i = 0, n - 1 do
  local k = i * 7
  redis.call('ZADD', KEYS[k + 1], now, request_id)
  redis.call('PEXPIRE', KEYS[k + 1], window + 1000)
  redis.call('ZADD', KEYS[k + 5], now + lease_ms, request_id)
  redis.call('PEXPIRE', KEYS[k + 5], lease_ms + window)
  if reserve_tokens > 0 then
    redis.call('INCRBY', KEYS[k + 4], reserve_tokens)
    redis.call('PEXPIRE', KEYS[k + 4], lease_ms + window)
  end
  if reserve_cost > 0 then
    redis.call('INCRBYFLOAT', KEYS[k + 7], reserve_cost)
    redis.call('PEXPIRE', KEYS[k + 7], lease_ms + window)
  end
end
return {0, 0}
