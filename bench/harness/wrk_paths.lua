-- wrk script of the imgsrv benchmark: send the requests of a file, one per line, in order
-- (each thread starting at its own offset, cycling), and print one JSON line at the end.
-- Usage: wrk -t2 -c32 -d10s -s wrk_paths.lua http://127.0.0.1:8080 -- requests.txt [RUN]
--
-- A line is a path (GET), or tab-separated fields: METHOD, path, then "Name: value"
-- headers (no HEAD: wrk's parser would wait for the body a HEAD answer's Content-Length
-- announces). A path holding "{n}" is a template: each request replaces it with
-- RUN-thread-counter, so every request names a new URL (a miss). Lines without "{n}" are
-- formatted once in init(), so that request() only picks the next string and costs wrk
-- almost nothing (the fast path of the hit scenario).
--
-- With BENCH_WRK_STATUSES=1 in the environment the script also counts responses per status,
-- the body bytes of 200/304 answers and the Retry-After values of 503s. That needs wrk's
-- response() callback, which makes wrk keep every response's headers and body: fine at
-- miss rates, too costly for hit rates, so it is only defined when asked for.

local threads = {}
local counter = 0
local run = "run"
local lines = {}
local position = 1
local count_statuses = os.getenv("BENCH_WRK_STATUSES") == "1"

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function split(line, separator)
  local fields = {}
  for field in string.gmatch(line, "([^" .. separator .. "]+)") do
    fields[#fields + 1] = field
  end
  return fields
end

local function parse(line)
  local fields = split(line, "\t")
  local method, path = "GET", fields[1]
  if #fields > 1 then
    method, path = fields[1], fields[2]
  end
  local headers = {}
  for i = 3, #fields do
    local name, value = string.match(fields[i], "^([^:]+):%s*(.*)$")
    if name then
      headers[name] = value
    end
  end
  local at = string.find(path, "{n}", 1, true)
  if at == nil then
    return { ready = wrk.format(method, path, headers) }
  end
  return {
    method = method,
    prefix = string.sub(path, 1, at - 1),
    suffix = string.sub(path, at + 3),
    headers = headers,
  }
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      lines[#lines + 1] = parse(line)
    end
  end
  if args[2] then
    run = args[2]
  end
  position = (id * 7919) % #lines + 1
  counts = { bytes = 0, bodies = 0, missing = 0 }
end

function request()
  local line = lines[position]
  position = position % #lines + 1
  if line.ready then
    return line.ready
  end
  counter = counter + 1
  local path = line.prefix .. run .. "-" .. id .. "-" .. counter .. line.suffix
  return wrk.format(line.method, path, line.headers)
end

if count_statuses then
  function response(status, headers, body)
    local key = "s" .. status
    counts[key] = (counts[key] or 0) + 1
    if status == 200 or status == 304 then
      counts.bytes = counts.bytes + #body
      if #body > 0 then
        counts.bodies = counts.bodies + 1
      end
    elseif status == 503 then
      local value = nil
      for name, v in pairs(headers) do
        if string.lower(name) == "retry-after" then
          value = v
        end
      end
      if value == nil then
        counts.missing = counts.missing + 1
      else
        local seconds = tonumber(value) or -1
        local ra = "r" .. seconds
        counts[ra] = (counts[ra] or 0) + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local statuses, retry_after = {}, {}
  local bytes, bodies, missing = 0, 0, 0
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    if c then
      bytes = bytes + (c.bytes or 0)
      bodies = bodies + (c.bodies or 0)
      missing = missing + (c.missing or 0)
      for key, n in pairs(c) do
        local kind, value = string.sub(key, 1, 1), string.sub(key, 2)
        if kind == "s" and key ~= "s" then
          statuses[value] = (statuses[value] or 0) + n
        elseif kind == "r" then
          retry_after[value] = (retry_after[value] or 0) + n
        end
      end
    end
  end
  local function object(t)
    local parts = {}
    for k, v in pairs(t) do
      parts[#parts + 1] = string.format('"%s": %d', k, v)
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "counted": %s, "statuses": %s, ' ..
    '"ok_bytes": %d, "bodies": %d, "retry_after": %s, "retry_after_missing": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean, tostring(count_statuses),
    object(statuses), bytes, bodies, object(retry_after), missing))
end
