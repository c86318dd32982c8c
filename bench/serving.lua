-- wrk script for bench/serving.py: POST the body in $BODY_FILE to the URL (JSON, or with $HEADER_LENGTH set the binary
-- tensor extension's JSON header plus raw bytes) and print the p50 and p99 latency.
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
local header_length = os.getenv("HEADER_LENGTH")
if header_length and header_length ~= "" then
  -- the binary tensor extension: a JSON header of that many bytes, then the raw tensor
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end

-- Answers that are not 2xx/3xx: wrk's own "Non-2xx or 3xx responses" line (a counter kept here in response()
-- would live in the threads' Lua states, and done() runs in another one, where it is always 0).
function done(summary, latency, requests)
  for _, p in pairs({50, 99}) do
    io.write(string.format("P%d_US %d\n", p, latency:percentile(p)))
  end
end
