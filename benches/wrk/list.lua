-- wrk script: GET /api/v1/agents?limit=50
-- Usage: TOKEN=... wrk -t2 -c8 -d10s -s benches/wrk/list.lua http://127.0.0.1:8080
function init(args)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  return wrk.format("GET", "/api/v1/agents?limit=50")
end
