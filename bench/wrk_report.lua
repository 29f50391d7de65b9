-- wrk script: print one machine-readable line with the figures bench/run.py needs.
-- Latencies are in microseconds, as wrk records them.
done = function(summary, latency, requests)
  local pct = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    pct[#pct + 1] = string.format('"%s": %.1f', tostring(q), latency:percentile(q))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {%s}, "latency_mean_us": %.1f, ' ..
    '"latency_max_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(pct, ", "), latency.mean, latency.max))
end
