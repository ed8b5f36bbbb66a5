-- wrk's load for scripts/bench-gateway: a small chat completion (BENCH_MODEL, default "bench"),
-- streamed when BENCH_STREAM=1, with the key in BENCH_KEY.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
local stream = os.getenv("BENCH_STREAM") == "1"
local model = stream and "bench-sse" or (os.getenv("BENCH_MODEL") or "bench")
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16'
    .. (stream and ',"stream":true' or '') .. '}'
