-- wrk script for bench/gate-vs-health.sh: a gated POST /v1/chat/completions, and a count
-- of the statuses seen (the bench expects every one to be the gate's 401).
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"sonnet","messages":[{"role":"user","content":"hello"}]}'
-- BENCH_KEYS: the key of the bench's keys file.
local auth = os.getenv("BENCH_AUTH")
if auth then
  wrk.headers["Authorization"] = auth
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do
      total[k] = (total[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(total) do
    table.insert(parts, k .. "x" .. v)
  end
  table.sort(parts)
  io.write("statuses: " .. table.concat(parts, " ") .. "\n")
end
