-- wrk script: send pre-built raw HTTP requests from a records file, in order.
-- Arguments: FILE MODE, MODE "cycle" (start again at the end) or "once" (stop at the end).
-- FILE holds records "<length>\n<raw request bytes>"; the harness writes it just before the run
-- (bodies signed with a current timestamp: Stripe's tolerance is 300 s).
local records = {}
local index = 0
local mode = "cycle"

function init(args)
  mode = args[2] or "cycle"
  local f = assert(io.open(args[1], "rb"))
  while true do
    local line = f:read("*l")
    if not line then break end
    records[#records + 1] = f:read(tonumber(line))
  end
  f:close()
end

function request()
  index = index + 1
  if index > #records then
    if mode == "once" then
      wrk.thread:stop()
      index = #records
    else
      index = 1
    end
  end
  return records[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
