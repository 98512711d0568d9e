-- GET with a bearer access token (e.g. /users/me): each request takes the next token of
-- TOKEN_FILE (one access token per line), round robin; the two wrk threads start half a
-- file apart. Non-200 answers are counted per thread (`bad`, with the first body) in the
-- format of ../shared/bench/refresh_rotate.lua, so bench/report.py reads both alike.
-- env: TOKEN_FILE
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  tokens = {}
  for line in io.lines(os.getenv("TOKEN_FILE")) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  if #tokens == 0 then error("no access token in TOKEN_FILE") end
  next_token = ((tid or 0) * math.floor(#tokens / 2)) % #tokens
  ok = 0; bad = 0; lost = 0
end

function request()
  next_token = next_token % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[next_token] })
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
    if not first_err then first_err = status .. " " .. body end
  end
end

function done(summary, latency, requests)
  io.write("------------------------------\n")
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("pct %g %.3f ms\n", p, latency:percentile(p) / 1000))
  end
  for _, t in ipairs(threads) do
    io.write(string.format("thread %s ok=%s bad=%s queue_empty=%s first_err=%s\n",
      tostring(t:get("tid")), tostring(t:get("ok")), tostring(t:get("bad")),
      tostring(t:get("lost")), tostring(t:get("first_err"))))
  end
end
