-- wrk script: POST the file named by $LOAD_FILE (content type $LOAD_TYPE) to the target path.
local f = assert(io.open(os.getenv("LOAD_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("LOAD_TYPE") or "image/jpeg"

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f requests=%d rps=%.2f\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.requests / (summary.duration / 1e6)))
end
