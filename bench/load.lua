-- wrk script of `make bench`: POSTs one JSON-RPC message with a bearer token and checks every
-- answer. wrk [options] -s bench/load.lua URL -- BODY_FILE TOKENS_FILE [EXTRA_HEADER]
--   BODY_FILE    the request body (sent as is)
--   TOKENS_FILE  one token per line; with several, each request takes the next one (each thread
--                starts at a different place), so N lines = N distinct callers
--                (a line with a space is a whole Authorization value, e.g. "DPoP <token>")
--   EXTRA_HEADER optional "name: value" request header (selects the upstream's canned answer);
--                "name: #N" sends N distinct values, one per request in turn (limit keys);
--                "name: @FILE" sends the lines of FILE, each once (DPoP proofs: thread k of
--                two takes lines k, k+2, ...)
-- An answer counts as good only if its status is 200 and its first bytes hold a JSON-RPC
-- "result" (a policy denial is a 200 with "error": it would not count). done() prints one line,
-- "WRK_JSON {...}", that bench/run.py reads.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local body, tokens, headers, prebuilt
local cursor = 0
local keyed_name, keyed_count, keyed_cursor
local listed_name, listed_values, listed_cursor

local function authorization(token)
  if string.find(token, " ", 1, true) then
    return token
  end
  return "Bearer " .. token
end

function init(args)
  body = read(args[1])
  tokens = {}
  for line in read(args[2]):gmatch("[^\n]+") do
    tokens[#tokens + 1] = line
  end
  headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["Mcp-Protocol-Version"] = "2025-11-25",
  }
  local extra = args[3]
  if extra and extra ~= "" then
    local name, value = extra:match("^([^:]+):%s*(.*)$")
    local count = value:match("^#(%d+)$")
    local file = value:match("^@(.+)$")
    if file then
      listed_name, listed_values = name, {}
      for line in read(file):gmatch("[^\n]+") do
        listed_values[#listed_values + 1] = line
      end
      listed_cursor = (id or 1) - 1
    elseif count then
      keyed_name, keyed_count = name, tonumber(count)
      keyed_cursor = ((id or 1) - 1) * math.floor(keyed_count / 2)
    else
      headers[name] = value
    end
  end
  cursor = ((id or 1) - 1) * math.floor(#tokens / 2)
  if #tokens == 1 and not keyed_name and not listed_name then
    headers["Authorization"] = authorization(tokens[1])
    prebuilt = wrk.format("POST", "/mcp", headers, body)
  end
  -- Counters, read back by done() through thread:get.
  good, bad_status, bad_body, body_bytes = 0, 0, 0, 0
  first_bad = ""
end

function request()
  if prebuilt then
    return prebuilt
  end
  cursor = cursor % #tokens + 1
  headers["Authorization"] = authorization(tokens[cursor])
  if listed_name then
    headers[listed_name] = listed_values[listed_cursor % #listed_values + 1]
    listed_cursor = listed_cursor + 2
  end
  if keyed_name then
    keyed_cursor = (keyed_cursor + 1) % keyed_count
    headers[keyed_name] = "key-" .. keyed_cursor
  end
  return wrk.format("POST", "/mcp", headers, body)
end

function response(status, _, answer)
  body_bytes = body_bytes + #answer
  if status ~= 200 then
    bad_status = bad_status + 1
  elseif not string.find(string.sub(answer, 1, 300), '"result"', 1, true) then
    bad_body = bad_body + 1
  else
    good = good + 1
    return
  end
  if first_bad == "" then
    first_bad = status .. " " .. string.sub(answer, 1, 200)
  end
end

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, _)
  local t = { good = 0, bad_status = 0, bad_body = 0, body_bytes = 0 }
  local first = ""
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + thread:get(k)
    end
    if first == "" then
      first = thread:get("first_bad")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"good":%d,"bad_status":%d,"bad_body":%d,' ..
    '"body_bytes":%d,"socket_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"first_bad":%s}\n',
    summary.requests, summary.duration, t.good, t.bad_status, t.bad_body, t.body_bytes,
    e.connect + e.read + e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, quote(first)))
end
