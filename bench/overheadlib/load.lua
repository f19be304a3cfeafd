-- wrk script of the overhead benchmark: POSTs a JSON body and checks every response.
--   wrk ... -s load.lua URL -- body=FILE check=json|sse min_events=N unique=0|1 auth=TOKEN marker=TEXT...
--                              [header=NAME:VALUE]
-- body:       the request body; with unique=1 its `@@NONCE@@` becomes a fresh value for each request
--             (run=ID, the wrk run's own id, keeps values distinct across runs)
--             (a distinct prompt each time: a configured cache misses, as it does on real traffic)
-- check:      json: the body must hold every marker; sse: it must also end with `data: [DONE]` and
--             carry at least min_events `data: ` events
-- header:     a response header that must have this value (e.g. x-gateway-cache:hit)
-- At the end one line `BENCH_RESULT {json}`: counts, bad responses, latency percentiles (µs).

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local opts = {}
local markers = {}
local pre, post, cached
local counter = 0
local headers = {}
ok, bad, bad_status, bad_body = 0, 0, 0, 0
first_bad = ""

function init(args)
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k == "marker" then table.insert(markers, v) elseif k then opts[k] = v end
  end
  if opts.header and opts.header ~= "" then
    opts.header_name, opts.header_value = opts.header:match("^([^:]+):(.*)$")
    opts.header_name = opts.header_name:lower()
  end
  local f = assert(io.open(opts.body, "rb"))
  local body = f:read("*a")
  f:close()
  headers["Content-Type"] = "application/json"
  headers["Accept"] = "application/json, text/event-stream"
  if opts.auth and opts.auth ~= "" then headers["Authorization"] = "Bearer " .. opts.auth end
  opts.min_events = tonumber(opts.min_events or "0")
  opts.run = opts.run or "0"
  if opts.unique == "1" then
    local s, e = body:find("@@NONCE@@", 1, true)
    assert(s, "unique=1 needs @@NONCE@@ in the body")
    pre, post = body:sub(1, s - 1), body:sub(e + 1)
  else
    cached = wrk.format("POST", nil, headers, body)
  end
end

function request()
  if cached then return cached end
  counter = counter + 1
  return wrk.format("POST", nil, headers, pre .. opts.run .. "-" .. tid .. "-" .. counter .. post)
end

local function body_ok(body)
  for _, m in ipairs(markers) do
    if not body:find(m, 1, true) then return false end
  end
  if opts.check == "sse" then
    if body:sub(-14) ~= "data: [DONE]\n\n" then return false end
    local n = 0
    for _ in body:gmatch("data: ") do n = n + 1 end
    if n < opts.min_events then return false end
  end
  return true
end

local function header_ok(headers)
  if not opts.header_name then return true end
  for k, v in pairs(headers) do
    if k:lower() == opts.header_name then return v == opts.header_value end
  end
  return false
end

function response(status, headers, body)
  if status ~= 200 then
    bad, bad_status = bad + 1, bad_status + 1
    if first_bad == "" then first_bad = "status " .. status .. ": " .. body:sub(1, 300) end
  elseif not header_ok(headers) then
    bad, bad_body = bad + 1, bad_body + 1
    if first_bad == "" then
      local seen = "absent"
      for k, v in pairs(headers) do
        if k:lower() == opts.header_name then seen = v end
      end
      first_bad = "header " .. opts.header_name .. ": " .. seen .. " (expected " .. opts.header_value .. ")"
    end
  elseif not body_ok(body) then
    bad, bad_body = bad + 1, bad_body + 1
    if first_bad == "" then
      local n = 0
      for _ in body:gmatch("data: ") do n = n + 1 end
      first_bad = "body (" .. #body .. " bytes, " .. n .. " events) starts: " .. body:sub(1, 200)
        .. " ... ends: " .. body:sub(-300)
    end
  else
    ok = ok + 1
  end
end

local function esc(s)
  return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end))
end

function done(summary, latency, requests)
  local t_ok, t_bad, t_status, t_body, example = 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    t_ok = t_ok + t:get("ok")
    t_bad = t_bad + t:get("bad")
    t_status = t_status + t:get("bad_status")
    t_body = t_body + t:get("bad_body")
    if example == "" then example = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"ok":%d,"bad":%d,"bad_status":%d,"bad_body":%d,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
    .. '"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,'
    .. '"first_bad":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, t_ok, t_bad, t_status, t_body,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), esc(example)))
end
