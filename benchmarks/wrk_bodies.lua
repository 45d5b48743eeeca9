-- wrk script for benchmarks/serve_bench.py: POST /predict with one distinct body per request.
--
--   wrk -t1 -c32 -d10s -s benchmarks/wrk_bodies.lua http://127.0.0.1:PORT -- BODIES LIMIT
--
-- BODIES is a file of JSON bodies, one a line, sent in order (the file holds more lines than
-- the run can send, so no body is sent twice); after LIMIT responses the run stops, whichever
-- comes first of that and -d. `done` prints one line, "RESULT {json}", for the driver to read.

local bodies = {}
local sent = 0
local limit = 0
local answered = 0

function init(args)
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = line
  end
  limit = tonumber(args[2]) or 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  return wrk.format(nil, "/predict", nil, bodies[(sent - 1) % #bodies + 1])
end

function response(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"mean_us": %.1f, "max_us": %d, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
