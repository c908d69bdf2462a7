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

-- setup() and done(): shared with the other script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") ..
       "bench_common.lua")

-- One request of the mode: a write (PATCH, PUT) or a read (GET) of
-- session s, property j.
local function make(write, s, j)
  local base = "/v1/account/" .. acc .. "/" .. ns .. "/s" .. s .. "/properties"
  if mode == "put" or mode == "getprop" then
    local path = base .. "/" .. prop_name(j)
    if write then
      return wrk.format("PUT", path, hdrs, value)
    end
    return wrk.format("GET", path .. suffix, hdrs, nil)
  end
  if write then
    return wrk.format("PATCH", base, hdrs, body)
  end
  return wrk.format("GET", base .. suffix, hdrs, nil)
end

-- The distinct requests: sessions x properties for put/getprop, sessions
-- otherwise. When there are at most POOL_MAX, init() formats each once and
-- request() picks one at random, so wrk's own CPU per request stays small
-- (the same is done for etcd in bench_etcd.lua); the choice is uniform over
-- the same space either way.
local POOL_MAX = 20000
local per = (mode == "put" or mode == "getprop") and props or 1
local space = sessions * per
local writes = nil
local reads = nil

local function wants_write()
  return mode == "patch" or mode == "put" or
         (mode == "mix" and math.random(1, 100) <= 20)
end

function init(args)
  math.randomseed(os.time() + (tid or 0))
  if mode == "fill" or space > POOL_MAX then
    return
  end
  if mode == "patch" or mode == "put" or mode == "mix" then
    writes = {}
  end
  if mode == "get" or mode == "getprop" or mode == "mix" then
    reads = {}
  end
  for i = 0, space - 1 do
    local s, j = math.floor(i / per), i % per
    if writes then writes[i + 1] = make(true, s, j) end
    if reads then reads[i + 1] = make(false, s, j) end
  end
end

request = function()
  counter = counter + 1
  if mode == "fill" then
    -- every session once, in order, then stop
    if counter > sessions then
      wrk.thread:stop()
    end
    return make(true, (counter - 1) % sessions, 0)
  end
  local write = wants_write()
  local i = math.random(0, space - 1)
  local pool = write and writes or reads
  if pool ~= nil then
    return pool[i + 1]
  end
  return make(write, math.floor(i / per), i % per)
end
