"""The limiter's Lua scripts (see :mod:`worker.limiter`). Times are integer microseconds of Redis ``TIME``.

A sender is one GCRA TAT: its messages queue behind each other anyway. The account is a calendar instead, a
sorted set of booked intervals (score = start, member = end; touching intervals merged, so a saturated stream
is one entry), where a message takes the first free interval at or after its sender's slot. A single account
TAT would have no holes: a slot reserved 0.9 s ahead for a busy sender would push every other sender behind it.
In a discrete-event simulation of 16 worker threads (1 s max wait) sending for 100 long codes at 1 MPS behind a
50 MPS account, an account TAT reached 23 MPS and the calendar 48.
"""

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function fmt(x) return string.format('%.0f', x) end
local function expire_after_last(cal)
  local last = redis.call('ZREVRANGE', cal, 0, 0)
  if last[1] then redis.call('PEXPIRE', cal, math.ceil((tonumber(last[1]) - now) / 1000) + 1000) end
end
"""

#: KEYS: sender TAT, sender non-urgent TAT, sender urgent flag, account calendar, sender deferral tickets, then
#: any number of hold keys (see :mod:`worker.holds`). ARGV: sender interval, account interval, non-urgent
#: interval (0: no urgent share), burst, cost, max wait (us), urgent (1/0), urgent active (ms).
#: Returns {granted, wait, limited by (0-4), now}; a held sender reserves nothing and waits out its longest hold
#: (limited by 4), so the send path asks Redis once per message instead of twice.
RESERVE = _COMMON + """
local held = 0
for i = 6, #KEYS do
  local left = redis.call('PTTL', KEYS[i])
  if left > held then held = left end
end
if held > 0 then return {0, held * 1000, 4, now} end
local Ts, Ta, Tb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local burst, cost, maxw = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local urgent, active_ms = ARGV[7] == '1', tonumber(ARGV[8])
local cal, width = KEYS[4], cost * Ta
local function tat(key)
  local v = tonumber(redis.call('GET', key))
  if v == nil or v < now then return now end
  return v
end

local tat_s, tat_b = tat(KEYS[1]), nil
if not urgent and Tb > 0 and redis.call('EXISTS', KEYS[3]) == 1 then tat_b = tat(KEYS[2]) end
local earliest, by = now, 0
local function bound(v, T, which)
  local at = v - (burst - 1) * T
  if at > earliest then earliest, by = at, which end
end
bound(tat_s, Ts, 1)
if tat_b then bound(tat_b, Tb, 3) end

for _, e in ipairs(redis.call('ZRANGEBYSCORE', cal, '-inf', now, 'LIMIT', 0, 32)) do
  if tonumber(e) <= now then redis.call('ZREM', cal, e) end
end
local function first_fit()
  local at = earliest
  local prev = redis.call('ZREVRANGEBYSCORE', cal, fmt(at), '-inf', 'LIMIT', 0, 1)
  if prev[1] and tonumber(prev[1]) > at then at = tonumber(prev[1]) end
  for _ = 1, 8 do
    local nxt = redis.call('ZRANGEBYSCORE', cal, fmt(at), '+inf', 'WITHSCORES', 'LIMIT', 0, 32)
    for i = 1, #nxt, 2 do
      if tonumber(nxt[i + 1]) >= at + width then return at end
      at = tonumber(nxt[i])
    end
    if #nxt < 64 then return at end
  end
  return at  -- past 256 fragments: a lower bound, good enough for a deferral
end
local at = first_fit()
if at > earliest then by = 2 end
local wait = at - now
if urgent then redis.call('SET', KEYS[3], '1', 'PX', math.ceil(wait / 1000) + active_ms) end
if wait > maxw then
  if urgent then return {0, wait, by, now} end
  -- Deferred messages take numbered tickets, one slot apart, so they come back spread out at the sender's
  -- pace instead of all at once to find the same next slot (the reject-and-poll herd).
  local T = tat_b and Tb or Ts
  local ticket = math.max(tonumber(redis.call('GET', KEYS[5])) or 0, at)
  local after_ticket = ticket + cost * T
  redis.call('SET', KEYS[5], fmt(after_ticket), 'PX', math.ceil((after_ticket - now) / 1000) + 1000)
  return {0, ticket - now, by, now}
end

local s, e = at, at + width
local before = redis.call('ZREVRANGEBYSCORE', cal, fmt(at), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
if before[1] and tonumber(before[1]) >= at then
  s = tonumber(before[2])
  redis.call('ZREM', cal, before[1])
end
local after = redis.call('ZRANGEBYSCORE', cal, fmt(e), fmt(e), 'LIMIT', 0, 1)
if after[1] then
  e = tonumber(after[1])
  redis.call('ZREM', cal, after[1])
end
redis.call('ZADD', cal, fmt(math.max(s, now)), fmt(e))
expire_after_last(cal)
local function put(key, v, T)
  local new = math.max(v, at) + cost * T
  redis.call('SET', key, fmt(new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
put(KEYS[1], tat_s, Ts)
if tat_b then put(KEYS[2], tat_b, Tb) end
return {1, wait, by, now}
"""

#: KEYS: a sender TAT. ARGV: delay (us). Moves the TAT to at least now + delay; returns its lead over now.
PUSH_BACK = _COMMON + """
local v = tonumber(redis.call('GET', KEYS[1]))
local target = now + tonumber(ARGV[1])
if v == nil or v < target then
  v = target
  redis.call('SET', KEYS[1], fmt(v), 'PX', math.ceil((v - now) / 1000) + 1000)
end
return v - now
"""

#: KEYS: an account calendar. ARGV: delay (us). Books [now, now + delay), merged with what it overlaps.
BLOCK = _COMMON + """
local s, e = now, now + tonumber(ARGV[1])
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt(e), 'WITHSCORES')
for i = 1, #found, 2 do
  if tonumber(found[i]) >= s then
    s, e = math.min(s, tonumber(found[i + 1])), math.max(e, tonumber(found[i]))
    redis.call('ZREM', KEYS[1], found[i])
  end
end
redis.call('ZADD', KEYS[1], fmt(math.max(s, now)), fmt(e))
expire_after_last(KEYS[1])
return e - now
"""
