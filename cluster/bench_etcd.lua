-- wrk script for cluster/bench --compare etcd: the same workload as
-- bench.lua's put/getprop, through etcd's v3 JSON gateway.
-- Environment:
--   BENCH_MODE       put | range | fill
--                    put = POST /v3/kv/put of one random key;
--                    range = POST /v3/kv/range of one random key;
--                    fill = put every key once, in order, then stop
--   BENCH_SESSIONS   keys k0..k(N-1) (10000), one per ctxd session
--   BENCH_VALUE_BYTES  value size in bytes before base64 (100)
--   BENCH_SERIALIZABLE  "1": range with "serializable": true (local read)
-- done() prints the same RESULT line as bench.lua.
local mode = os.getenv("BENCH_MODE") or "put"
local keys = tonumber(os.getenv("BENCH_SESSIONS") or "10000")
local vbytes = tonumber(os.getenv("BENCH_VALUE_BYTES") or "100")
local serializable = os.getenv("BENCH_SERIALIZABLE") == "1"
local counter = 0
local hdrs = { ["Content-Type"] = "application/json" }

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = alphabet:sub(c1 + 1, c1 + 1) .. alphabet:sub(c2 + 1, c2 + 1) ..
      (b and alphabet:sub(c3 + 1, c3 + 1) or "=") ..
      (c and alphabet:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local value = b64(string.rep("v", vbytes))
local keyb64 = {}

-- setup() and done(): shared with the other script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") ..
       "bench_common.lua")

local extra = ""
if serializable then
  extra = ',"serializable":true'
end

local function make(i)
  if mode == "put" or mode == "fill" then
    return wrk.format("POST", "/v3/kv/put", hdrs,
      '{"key":"' .. keyb64[i] .. '","value":"' .. value .. '"}')
  end
  return wrk.format("POST", "/v3/kv/range", hdrs,
    '{"key":"' .. keyb64[i] .. '"' .. extra .. '}')
end

-- Each distinct request formatted once (as bench.lua does for ctxd), so
-- wrk's own CPU per request is the same small cost for both systems.
local pool = {}

function init(args)
  math.randomseed(os.time() + (tid or 0))
  for i = 0, keys - 1 do
    keyb64[i] = b64("k" .. i)
  end
  if mode ~= "fill" then
    for i = 0, keys - 1 do
      pool[i] = make(i)
    end
  end
end

request = function()
  counter = counter + 1
  if mode == "fill" then
    if counter > keys then
      wrk.thread:stop()
    end
    return make((counter - 1) % keys)
  end
  return pool[math.random(0, keys - 1)]
end
