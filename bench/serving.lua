-- wrk script for bench/serving.py: POST the body in $BODY_FILE to the URL (JSON, or with $HEADER_LENGTH set the binary
-- tensor extension's JSON header plus raw bytes), count answers that are not 200.
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

local failed = 0
function response(status, headers, body)
  if status ~= 200 then
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format("NON200 %d\n", failed))
  for _, p in pairs({50, 99}) do
    io.write(string.format("P%d_US %d\n", p, latency:percentile(p)))
  end
end
