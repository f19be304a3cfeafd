-- Rate limits and budgets, checked and taken in one atomic step (gateway/limits/backend.py explains the
-- model; MemoryBackend is the same in Python). Called as (ARGV[2]: the numbers, space-separated, one
-- string: packing one argument costs the client far less than thirty):
--   admit:  KEYS = R rate counters, then B x (budget hash, its reservations zset)
--           ARGV = "admit", "R B member reservation_ttl_ms  R x (limit cost)  B x (limit-amount amount ttl_ms)"
--   settle: KEYS = R rate counters, then B x (budget hash, reservations zset)
--           ARGV = "settle", "R B  R x (limit delta)  B x (member actual-reserved actual ttl_ms)"
--   seed:   KEYS = budget hash;  ARGV = "seed", "spent ttl_ms"
-- Money is integer units in Redis integers (64-bit); comparisons are done on their decimal strings so
-- they stay exact beyond a double's 2^53.
--
-- A call may be run twice (gateway/redis_batch.py sends a round trip again when its connection was lost,
-- and Redis may have run it before the answer was lost). The budgets stay exact: an admission whose
-- member already holds its reservation takes nothing again, and a settlement whose member holds neither
-- a reservation nor a released one's mark (`<member>:x`, left by the admission that released it after
-- its ttl) was settled already. Rate counters are not keyed by call: a run twice counts a request (or a
-- settlement's token difference) twice, never less.
local WINDOW = 60000000  -- one minute, in microseconds

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)

-- a <= b for integers written in decimal (either may be negative)
local function le(a, b)
  local an, bn = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if an ~= bn then return an end
  if an then a, b = string.sub(b, 2), string.sub(a, 2) end  -- both negative: compare magnitudes, reversed
  if #a ~= #b then return #a < #b end
  return a <= b
end

local function set_tat(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end

local op = ARGV[1]
local A = {}
for word in string.gmatch(ARGV[2], '%S+') do A[#A + 1] = word end

if op == 'seed' then
  if redis.call('HSETNX', KEYS[1], 'seeded', '1') == 1 then
    redis.call('HINCRBY', KEYS[1], 'spent', A[1])
    redis.call('HINCRBY', KEYS[1], 'committed', A[1])
  end
  if tonumber(A[2]) > 0 then redis.call('PEXPIRE', KEYS[1], A[2]) end
  return 1
end

local R, B = tonumber(A[1]), tonumber(A[2])

if op == 'settle' then
  local a = 3
  for i = 1, R do
    local limit, delta = tonumber(A[a]), tonumber(A[a + 1])
    a = a + 2
    local interval = WINDOW / limit
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat then
      set_tat(KEYS[i], math.floor(tat + delta * interval))
    elseif delta > 0 then
      set_tat(KEYS[i], math.floor(now + delta * interval))
    end
  end
  local out = {}
  for j = 1, B do
    local hk, zk = KEYS[R + 2 * j - 1], KEYS[R + 2 * j]
    local member, delta, actual, ttl = A[a], A[a + 1], A[a + 2], tonumber(A[a + 3])
    a = a + 4
    if redis.call('ZREM', zk, member) == 1 then
      redis.call('HINCRBY', hk, 'committed', delta)
      redis.call('HINCRBY', hk, 'spent', actual)
    elseif redis.call('ZREM', zk, string.match(member, '^(.*):') .. ':x') == 1 then
      -- the reservation was already released (it outlived its ttl): count the cost alone
      redis.call('HINCRBY', hk, 'committed', actual)
      redis.call('HINCRBY', hk, 'spent', actual)
    end  -- else settled already: this settlement was sent again
    if ttl > 0 then redis.call('PEXPIRE', hk, ttl) end
    out[j] = redis.call('HGET', hk, 'spent') or '0'
  end
  return out
end

-- admit
local member, res_ttl = A[3], tonumber(A[4])
if B > 0 and redis.call('ZSCORE', KEYS[R + 2], member .. ':' .. A[6 + 2 * R]) then
  -- sent again after this very admission took its limits: answer as it did, take nothing
  local out = {1}
  for i = 1, R do
    local interval = WINDOW / tonumber(A[3 + 2 * i])
    local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
    out[#out + 1] = math.floor((WINDOW - (tat - now)) / interval)
    out[#out + 1] = math.ceil((tat - now) / 1000)
  end
  return out
end
local a = 5
local tats = {}
local out = {1}
for i = 1, R do
  local limit, cost = tonumber(A[a]), tonumber(A[a + 1])
  a = a + 2
  if cost > limit then return {4, i} end
  local interval = WINDOW / limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = math.floor(tat + cost * interval)
  local allow_at = new_tat - WINDOW
  if allow_at > now then return {0, i, math.ceil((allow_at - now) / 1000)} end
  tats[i] = new_tat
  out[#out + 1] = math.floor((WINDOW - (new_tat - now)) / interval)
  out[#out + 1] = math.ceil((new_tat - now) / 1000)
end
local budgets = {}
for j = 1, B do
  local hk, zk = KEYS[R + 2 * j - 1], KEYS[R + 2 * j]
  local max_committed, amount, ttl = A[a], A[a + 1], tonumber(A[a + 2])
  a = a + 3
  local expired = redis.call('ZRANGEBYSCORE', zk, '-inf', now_ms)
  if #expired > 0 then
    local released = {}
    for _, m in ipairs(expired) do
      local id, held = string.match(m, '^(.*):(%d+)$')
      if held then  -- a reservation (else an expired mark): given back, and marked for its late settlement
        if held ~= '0' then redis.call('HINCRBY', hk, 'committed', '-' .. held) end
        released[#released + 1] = id .. ':x'
      end
    end
    redis.call('ZREMRANGEBYSCORE', zk, '-inf', now_ms)
    for _, m in ipairs(released) do redis.call('ZADD', zk, now_ms + res_ttl, m) end
  end
  if redis.call('HEXISTS', hk, 'seeded') == 0 then return {3, j} end
  local committed = redis.call('HGET', hk, 'committed') or '0'
  if not le(committed, max_committed) then return {2, j, committed} end
  budgets[j] = {hk, zk, amount, ttl}
end
for i = 1, R do
  set_tat(KEYS[i], tats[i])
end
for j = 1, B do
  local b = budgets[j]
  redis.call('HINCRBY', b[1], 'committed', b[3])
  redis.call('ZADD', b[2], now_ms + res_ttl, member .. ':' .. b[3])
  if b[4] > 0 then
    redis.call('PEXPIRE', b[1], b[4])
    redis.call('PEXPIRE', b[2], b[4])
  end
end
return out
