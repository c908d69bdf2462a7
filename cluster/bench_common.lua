-- Shared by the wrk scripts of cluster/bench (bench.lua for ctxd,
-- bench_etcd.lua for etcd), loaded with dofile from the same directory:
-- the per-thread seed and the one RESULT line that cluster/bench parses.

function setup(thread)
  thread:set("tid", math.random(1, 1000000))
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
