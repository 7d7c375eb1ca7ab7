-- wrk -s bench/wrk_post.lua: POST the JSON body read from the file $WRK_BODY.
-- $WRK_HEADERS="Name: value|Name: value" adds headers (credentials, anthropic-version, ...).
-- Prints one line for bench/run.py to parse:
--   RESULT rps=.. p50_ms=.. p90_ms=.. p99_ms=.. max_ms=.. reqs=.. connect=.. read=.. write=.. status=.. timeout=..
-- (status = responses with a status >= 400, which wrk also reports as "Non-2xx or 3xx responses").
wrk.method = "POST"
local f = assert(io.open(assert(os.getenv("WRK_BODY"), "set WRK_BODY=path/to/body.json"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for kv in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^|]+") do
  local k, v = string.match(kv, "^%s*([^:]+):%s*(.-)%s*$")
  if k then wrk.headers[k] = v end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f reqs=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout))
end
