-- wrk script for benches/load/run.sh: POSTs one JSON body and checks every answer.
--
-- The body comes from the environment variable LOAD_BODY (run.sh sets it). Each answer counts
-- as "non2xx" when its status is outside 200-299, and as "not_ok" when it is a 2xx that is not
-- the upstream's OK envelope (the gateway answers rate limits and validation errors with
-- HTTP 200 and a non-zero ErrorCode, plus an X-Chat-Gateway-Rejected header).
--
-- done() prints one line that run.sh parses:
--   LOADRESULT requests=N duration_us=N bytes=N non2xx=N not_ok=N connect_err=N read_err=N
--              write_err=N timeout_err=N status_err=N p50_us=F p90_us=F p99_us=F
--              mean_us=F max_us=F
-- plus a line per status code seen other than 200 (LOADSTATUS code=N count=N).

wrk.method = "POST"
wrk.body = os.getenv("LOAD_BODY") or
  '{"GroupId":"live-1","GroupCounter":[{"Key":"likes","Value":1}],"Mode":"Increase"}'
wrk.headers["Content-Type"] = "application/json"

-- LOAD_GROUPS=N (N > 0): each request goes to the next of N groups, live-0 .. live-(N-1), in
-- turn, so that no two requests in flight share a group and the gateway's coalescing has
-- nothing to merge ("no hot group"); the body is otherwise LOAD_BODY's default.
local groups = tonumber(os.getenv("LOAD_GROUPS") or "0") or 0
local sent = 0
if groups > 0 then
  function request()
    sent = sent + 1
    return wrk.format(nil, nil, nil, string.format(
      '{"GroupId":"live-%d","GroupCounter":[{"Key":"likes","Value":1}],"Mode":"Increase"}',
      sent % groups))
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  not_ok = 0
  statuses = {}
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
  elseif headers["x-chat-gateway-rejected"] or headers["X-Chat-Gateway-Rejected"]
      or not string.find(body, '"ErrorCode":0,', 1, true) then
    not_ok = not_ok + 1
  end
end

function done(summary, latency, requests)
  local n2, nok = 0, 0
  local codes = {}
  for _, t in ipairs(threads) do
    n2 = n2 + t:get("non2xx")
    nok = nok + t:get("not_ok")
    -- statuses is a table: wrk copies it across Lua states, so walk it here.
    local st = t:get("statuses")
    if st then
      for code, count in pairs(st) do
        codes[code] = (codes[code] or 0) + count
      end
    end
  end
  local e = summary.errors
  io.write(string.format(
    "LOADRESULT requests=%d duration_us=%d bytes=%d non2xx=%d not_ok=%d connect_err=%d " ..
    "read_err=%d write_err=%d timeout_err=%d status_err=%d p50_us=%.1f p90_us=%.1f " ..
    "p99_us=%.1f mean_us=%.1f max_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, n2, nok, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
  for code, count in pairs(codes) do
    io.write(string.format("LOADSTATUS code=%d count=%d\n", code, count))
  end
end
