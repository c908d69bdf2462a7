-- wrk script for cluster/bench: PATCH / GET / mix over many sessions.
-- Environment: BENCH_MODE=patch|get|mix, BENCH_KEY, BENCH_ACC, BENCH_NS,
-- BENCH_SESSIONS (10000), BENCH_VALUE_BYTES (100), BENCH_CONSISTENCY (optional)
local mode = os.getenv("BENCH_MODE") or "mix"
local key = os.getenv("BENCH_KEY")
local acc = os.getenv("BENCH_ACC") or "bench"
local ns = os.getenv("BENCH_NS") or "bench"
local sessions = tonumber(os.getenv("BENCH_SESSIONS") or "10000")
local vbytes = tonumber(os.getenv("BENCH_VALUE_BYTES") or "100")
local consistency = os.getenv("BENCH_CONSISTENCY")
local counter = 0

local value = '"' .. string.rep("v", vbytes - 2) .. '"'
local body = '{"p":' .. value .. '}'
local hdrs = { ["maven-api-key"] = key, ["Content-Type"] = "application/json" }
local suffix = ""
if consistency ~= nil and consistency ~= "" then
  suffix = "?consistency=" .. consistency
end

function setup(thread)
  thread:set("tid", math.random(1, 1000000))
end

function init(args)
  math.randomseed(os.time() + (tid or 0))
end

request = function()
  counter = counter + 1
  local sid = "s" .. math.random(0, sessions - 1)
  if mode == "fill" then
    -- every session once, in order, then random
    sid = "s" .. ((counter - 1) % sessions)
    if counter > sessions then
      wrk.thread:stop()
    end
  end
  local path = "/v1/account/" .. acc .. "/" .. ns .. "/" .. sid .. "/properties"
  local write = (mode == "patch") or (mode == "fill") or
                (mode == "mix" and math.random(1, 100) <= 20)
  if write then
    return wrk.format("PATCH", path, hdrs, body)
  end
  return wrk.format("GET", path .. suffix, hdrs, nil)
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read +
                 summary.errors.write + summary.errors.status +
                 summary.errors.timeout
  io.write(string.format(
    "RESULT requests=%d duration_s=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d\n",
    summary.requests, summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors))
end
