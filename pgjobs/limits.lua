-- Takes start tokens for jobs a worker holds locked, atomically across buckets: the
-- Redis twin of the SQL function pgjobs_take_tokens (schema.sql), run with EVALSHA.
--
-- Each bucket is a sorted set of the starts granted inside its sliding window (score =
-- Redis time in ms), so no window of that length ever holds more than its max.
--
-- KEYS: the buckets' sorted sets, then the state marker. The marker holds "since" (ms):
-- a bucket grants only once `since + window` has passed. It is written by the worker that
-- adopts Redis as the store (pgjobs/limits.py); while it is missing the script grants
-- nothing and answers {-1}, because a Redis without it may have lost starts it granted.
-- ARGV: a member prefix unique to this call, then per bucket its max and its window (ms),
-- then per job the 1-based indexes of its first and second bucket (0 = none). Jobs are
-- served in the order given and get both tokens or none.
-- Returns {grants (1/0 per job), waits (ms until each bucket grants again, 0 = it still
-- can), now (ms)}.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local n = #KEYS - 1
local since = redis.call('GET', KEYS[n + 1])
if not since then
  return {-1}
end
since = tonumber(since)
local prefix = ARGV[1]
local free, taken, windows = {}, {}, {}
for i = 1, n do
  local max = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  windows[i] = window
  taken[i] = {}
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if now < since + window then
    free[i] = 0
  else
    free[i] = max - redis.call('ZCARD', KEYS[i])
  end
end
local first_job = 2 * n + 2
local m = (#ARGV - first_job + 1) / 2
local grants = {}
for j = 1, m do
  local a = tonumber(ARGV[first_job + 2 * (j - 1)])
  local b = tonumber(ARGV[first_job + 2 * (j - 1) + 1])
  if (a == 0 or free[a] > 0) and (b == 0 or free[b] > 0) then
    grants[j] = 1
    local member = prefix .. ':' .. j
    if a > 0 then
      free[a] = free[a] - 1
      table.insert(taken[a], now)
      table.insert(taken[a], member)
    end
    if b > 0 then
      free[b] = free[b] - 1
      table.insert(taken[b], now)
      table.insert(taken[b], member)
    end
  else
    grants[j] = 0
  end
end
local waits = {}
for i = 1, n do
  if #taken[i] > 0 then
    -- In slices: unpack() of a very long list would overflow Lua's stack.
    for s = 1, #taken[i], 1000 do
      redis.call('ZADD', KEYS[i], unpack(taken[i], s, math.min(s + 999, #taken[i])))
    end
    redis.call('PEXPIRE', KEYS[i], windows[i] + 1000)
  end
  waits[i] = 0
  if free[i] <= 0 then
    local until_ms = since + windows[i]
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if oldest[2] then
      until_ms = math.max(until_ms, tonumber(oldest[2]) + windows[i])
    end
    waits[i] = math.max(1, until_ms - now)
  end
end
return {grants, waits, now}
