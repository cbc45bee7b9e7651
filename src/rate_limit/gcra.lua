-- GCRA for one upstream call, the same as the local limiter (governor): a call passes when
-- now >= tat - tau, and then tat = max(tat, now) + t, where t = 1/rate and
-- tau = t * (burst - 1). A refusal waits until tat - tau.
--
-- KEYS[1]: the app key of the API; KEYS[2] (optional): the group key.
-- ARGV: app t, app tau, group t, group tau, in nanoseconds.
-- Returns {0, group_next, app_next} when the call may go (how long until the group's and the
-- app's next call can pass: 0 while their burst is not spent), {1, wait} refused for its
-- group, {2, wait} refused for the app; all in microseconds, rounded up. No wait is longer
-- than t: a state can be at most tau + t ahead of now (a spent budget).
-- KEYS[1] alone without ARGV is a probe: {0, 0, 0}, nothing read or written (it still proves
-- that this user may run the script on this app's keys on this node).
--
-- Group first, then app; state is written only when both pass, so a refusal spends nothing
-- (but for an impossible state, corrected below).
-- Times are microseconds of the Redis server's clock, so the gateways' clocks do not matter.
if #ARGV == 0 then
  return {0, 0, 0}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- A key lives until its tat has passed: after that it is as good as a new one, so it can go.
local function store(key, tat)
  local ttl = math.ceil((tat - now) / 1000) + 1
  -- %.3f: Lua's own number-to-string keeps 14 digits, too few for microseconds since 1970.
  redis.call('SET', key, string.format('%.3f', tat), 'PX', ttl)
end

local function tat_after(key, t, tau)
  local stored = redis.call('GET', key)
  local tat = now
  if stored then
    tat = tonumber(stored) or now
  end
  -- A state further ahead than a spent budget cannot come from this script on this clock: the
  -- Redis host's clock stepped back (the keys hold absolute times), or other numbers wrote it.
  -- It is corrected to a budget spent just now (written even if the call is refused), instead
  -- of refusing the key until the clock catches up.
  if tat > now + tau + t then
    tat = now + tau + t
    store(key, tat)
  end
  local earliest = tat - tau
  if now < earliest then
    return nil, earliest - now
  end
  return math.max(tat, now) + t
end

local app_t, app_tau = tonumber(ARGV[1]) / 1000, tonumber(ARGV[2]) / 1000
local group_tat, group_tau
if KEYS[2] then
  local group_t = tonumber(ARGV[3]) / 1000
  group_tau = tonumber(ARGV[4]) / 1000
  local tat, wait = tat_after(KEYS[2], group_t, group_tau)
  if not tat then
    return {1, math.ceil(wait)}
  end
  group_tat = tat
end
local app_tat, wait = tat_after(KEYS[1], app_t, app_tau)
if not app_tat then
  return {2, math.ceil(wait)}
end

local group_next = 0
if group_tat then
  store(KEYS[2], group_tat)
  group_next = math.max(0, math.ceil(group_tat - group_tau - now))
end
store(KEYS[1], app_tat)
return {0, group_next, math.max(0, math.ceil(app_tat - app_tau - now))}
