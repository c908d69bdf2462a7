-- wrk script for cluster/bench: ctxd workloads over many sessions.
-- Environment:
--   BENCH_MODE       patch | get | mix | fill | put | getprop
--   BENCH_KEY        the account's API key (maven-api-key)
--   BENCH_ACC, BENCH_NS   account and namespace ("bench")
--   BENCH_SESSIONS   sessions s0..s(N-1) (10000)
--   BENCH_PROPS      properties p0..p(N-1) per session for put/getprop;
--                    1 (the default) means the single property "p"
--   BENCH_VALUE_BYTES  size of each value as JSON text, quotes included (100)
--   BENCH_CONSISTENCY  optional ?consistency= for reads (stale, leader, ...)
-- Modes: patch = PATCH {"p": value} of one random session; get = GET of a
-- session's properties; mix = 80% get / 20% patch; fill = PATCH {"p": value}
-- to every session once, in order, then stop; put = PUT of one property
-- (/sK/properties/pJ); getprop = GET of that property. cluster/bench fills
-- data from Python (bench_lib.ctxd_fill), which checks every answer.
-- done() prints one RESULT line that cluster/bench parses.
local mode = os.getenv("BENCH_MODE") or "mix"
local key = os.getenv("BENCH_KEY")
local acc = os.getenv("BENCH_ACC") or "bench"
local ns = os.getenv("BENCH_NS") or "bench"
local sessions = tonumber(os.getenv("BENCH_SESSIONS") or "10000")
local props = tonumber(os.getenv("BENCH_PROPS") or "1")
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

local function prop_name(j)
  if props <= 1 then
    return "p"
  end
  return "p" .. j
end

function setup(thread)
  thread:set("tid", math.random(1, 1000000))
end

function init(args)
  math.randomseed(os.time() + (tid or 0))
end

request = function()
  counter = counter + 1
  local base = "/v1/account/" .. acc .. "/" .. ns .. "/"
  local sid = "s" .. math.random(0, sessions - 1)
  if mode == "put" or mode == "getprop" then
    local path = base .. sid .. "/properties/" .. prop_name(math.random(0, props - 1))
    if mode == "put" then
      return wrk.format("PUT", path, hdrs, value)
    end
    return wrk.format("GET", path .. suffix, hdrs, nil)
  end
  if mode == "fill" then
    -- every session once, in order, then stop
    sid = "s" .. ((counter - 1) % sessions)
    if counter > sessions then
      wrk.thread:stop()
    end
  end
  local path = base .. sid .. "/properties"
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
    "RESULT requests=%d duration_s=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f errors=%d\n",
    summary.requests, summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, errors))
end
