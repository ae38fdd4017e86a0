-- wrk script: POST /api/v1/activity with one event per request (each
-- answered only after its commit). Needs TOKEN and AGENT (an agent id).
-- Usage: TOKEN=... AGENT=... wrk -t2 -c64 -d5s -s benches/wrk/activity.lua http://127.0.0.1:8080
local counter = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"events":[{"agent_id":"%s","kind":"step","payload":{"n":%d,"text":"hello"}}]}',
    os.getenv("AGENT"), counter)
  return wrk.format(nil, "/api/v1/activity", nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("errors") or 0)
  end
  io.write(string.format("non-200 responses: %d\n", bad))
end
