-- wrk script of the imgsrv benchmark: GET the paths of a file (one per line), in order,
-- each thread starting at its own offset, and print one JSON line of results at the end.
-- Usage: wrk -t2 -c32 -d10s -s wrk_paths.lua http://127.0.0.1:8080 -- paths.txt
-- Requests are formatted once in init(): request() then only picks the next string, so
-- the script costs wrk almost nothing per request.

local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local requests = {}
  for line in io.lines(args[1]) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("GET", line)
    end
  end
  wrk_requests = requests
  counter = (id * 7919) % #requests + 1
end

function request()
  local r = wrk_requests[counter]
  counter = counter % #wrk_requests + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
