-- wrk script: POST /api/v1/approvals/{id}/decide, each request a different
-- pending approval (answered only after the decision is persisted).
-- Needs TOKEN, THREADS (wrk's -t) and IDS (a file with one pending approval id per line); the
-- governance bench (`cargo bench --bench governance -- wrk`) prepares them.
-- Each wrk thread takes every Nth id; once a thread runs out it sends
-- requests that are refused (counted apart), so the count of 200s is what
-- was decided. Prints "decided: N, other: M".
local threads = {}

function setup(thread)
  -- setup runs before each thread's init, so the index is known there.
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.body = '{"decision":"approve"}'
  ids = {}
  local nthreads = tonumber(os.getenv("THREADS"))
  local n = 0
  for line in io.lines(os.getenv("IDS")) do
    if n % nthreads == index then
      table.insert(ids, line)
    end
    n = n + 1
  end
  next_id = 1
  decided = 0
  other = 0
end

function request()
  local id = ids[next_id] or "exhausted"
  next_id = next_id + 1
  return wrk.format(nil, "/api/v1/approvals/" .. id .. "/decide")
end

function response(status, headers, body)
  if status == 200 then
    decided = decided + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local d, o = 0, 0
  for _, t in ipairs(threads) do
    d = d + (t:get("decided") or 0)
    o = o + (t:get("other") or 0)
  end
  io.write(string.format("decided: %d, other: %d\n", d, o))
end
