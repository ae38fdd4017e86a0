-- wrk script: POST /api/v1/agents with a unique name per request.
-- Usage: TOKEN=... wrk -t2 -c8 -d10s -s benches/wrk/create.lua http://127.0.0.1:8080
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  counter = counter + 1
  local body = string.format('{"name":"wrk-%d-%d-%d","role":"bench","model":"gpt-4o"}', id, os.time(), counter)
  return wrk.format(nil, "/api/v1/agents", nil, body)
end

function response(status, headers, body)
  if status ~= 201 then
    errors = (errors or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("errors") or 0)
  end
  io.write(string.format("non-201 responses: %d\n", bad))
end
