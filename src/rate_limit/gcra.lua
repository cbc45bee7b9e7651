-- GCRA for one upstream call, the same as the local limiter (governor): a call passes when
-- now >= tat - tau, and then tat = max(tat, now) + t, where t = 1/rate and
-- tau = t * (burst - 1). A refusal waits until tat - tau.
--
-- KEYS[1]: the app key of the API, KEYS[2]: where its numbers are kept; KEYS[3], KEYS[4]
-- (optional): the same for the group.
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
--
-- Each key's tat is kept as a number alone (as gateways before the numbers were kept wrote
-- it, and still read it during a rolling upgrade), and beside it, in its own key, the
-- numbers it was written under ("t tau", ns). A check with other numbers (the budget was
-- changed while running) first converts the state keeping the tokens it has left, never
-- more than the new burst: a changed budget refills no bucket. Without kept numbers the
-- state is taken as written under the caller's.
if #ARGV == 0 then
  return {0, 0, 0}
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- A key lives until its tat has passed: after that it is as good as a new one, so it can go.
local function store(key, numbers_key, numbers, tat)
  local ttl = math.ceil((tat - now) / 1000) + 1
  -- %.3f: Lua's own number-to-string keeps 14 digits, too few for microseconds since 1970.
  redis.call('SET', key, string.format('%.3f', tat), 'PX', ttl)
  redis.call('SET', numbers_key, numbers, 'PX', ttl)
end

-- The tat written under other numbers, as the tat under (t, tau) with the same tokens left.
local function converted(tat, written, t, tau)
  local old_t, old_tau = string.match(written, '^(%d+) (%d+)$')
  old_t, old_tau = tonumber(old_t), tonumber(old_tau)
  if not old_t or old_t <= 0 then
    return tat
  end
  old_t, old_tau = old_t / 1000, old_tau / 1000
  local left = math.max(0, old_tau + old_t - math.max(0, tat - now)) * t / old_t
  return now + math.max(0, tau + t - left)
end

local function tat_after(key, numbers_key, t_ns, tau_ns)
  local t, tau = tonumber(t_ns) / 1000, tonumber(tau_ns) / 1000
  local numbers = t_ns .. ' ' .. tau_ns
  local stored = redis.call('MGET', key, numbers_key)
  local tat = now
  -- A converted state is written even if the call is refused: from the change on, the key
  -- earns tokens at the new rate.
  local rewrite = false
  if stored[1] then
    tat = tonumber(stored[1]) or now
    if stored[2] and stored[2] ~= numbers then
      tat = converted(tat, stored[2], t, tau)
      rewrite = true
    end
  end
  -- A state further ahead than a spent budget cannot come from this script on this clock: the
  -- Redis host's clock stepped back (the keys hold absolute times), or other numbers wrote it.
  -- It is corrected to a budget spent just now (written even if the call is refused), instead
  -- of refusing the key until the clock catches up.
  if tat > now + tau + t then
    tat = now + tau + t
    rewrite = true
  end
  if rewrite then
    store(key, numbers_key, numbers, tat)
  end
  local earliest = tat - tau
  if now < earliest then
    return nil, earliest - now
  end
  return math.max(tat, now) + t, tau, numbers
end

-- On a pass: the new tat, tau (us) and the numbers to keep; on a refusal: nil and the wait.
local group_tat, group_tau, group_numbers
if KEYS[3] then
  group_tat, group_tau, group_numbers = tat_after(KEYS[3], KEYS[4], ARGV[3], ARGV[4])
  if not group_tat then
    return {1, math.ceil(group_tau)}
  end
end
local app_tat, app_tau, app_numbers = tat_after(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if not app_tat then
  return {2, math.ceil(app_tau)}
end

local group_next = 0
if group_tat then
  store(KEYS[3], KEYS[4], group_numbers, group_tat)
  group_next = math.max(0, math.ceil(group_tat - group_tau - now))
end
store(KEYS[1], KEYS[2], app_numbers, app_tat)
return {0, group_next, math.max(0, math.ceil(app_tat - app_tau - now))}
