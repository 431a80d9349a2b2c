-- wrk script of the heartbeat benchmarks (scripts/bench-api.sh, bench-before-after.sh,
-- bench-cores.sh): POST /api/hub/heartbeat rotating over the agents bench-0..99 (which
-- the scripts register first), each with one of ten skills.
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"agent_id":"bench-%d","hostname":"h","skill_names":["s%d"]}', n % 100, n % 10)
  return wrk.format("POST", "/api/hub/heartbeat", {["content-type"] = "application/json"}, body)
end
