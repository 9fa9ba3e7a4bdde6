-- wrk script: replay pre-built, pre-signed HTTP requests (one unique svix-id each).
-- BENCH_REQUESTS names a file of raw requests separated by "\n@@@@\n" (bench/ingest.py
-- writes it). Signing in Lua would measure wrk, not the server; pre-signing keeps wrk cheap.
local requests = {}
local next_index = 1

function init(args)
  local f = assert(io.open(os.getenv("BENCH_REQUESTS"), "rb"))
  local data = f:read("*a")
  f:close()
  local sep = "\n@@@@\n"
  local pos = 1
  while true do
    local s, e = string.find(data, sep, pos, true)
    if not s then break end
    requests[#requests + 1] = string.sub(data, pos, s - 1)
    pos = e + 1
  end
end

function request()
  local r = requests[next_index]
  next_index = next_index + 1
  if next_index > #requests then next_index = 1 end  -- wraps: later ones are duplicates
  return r
end

function done(summary, latency, _)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "loaded": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    #requests))
end
