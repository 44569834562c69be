
-- Pre-check of one entity (API key or model): counts the request only when every limit passes.
-- KEYS: minute hash, day hash, lease set (one hash tag: one cluster slot).
-- ARGV: rpm, rpd, tpm, tpd, concurrency (0 = no limit), reserved tokens, lease id, lease ms,
--       minute bucket ms, minute buckets, day bucket ms, day buckets.
-- Returns {admitted, metric (1 rpm, 2 rpd, 3 tpm, 4 tpd, 5 concurrency), retry ms,
--          minute bucket, day bucket, minute requests, day requests, minute tokens,
--          day tokens, minute reset ms, day reset ms, in flight}.
local rpm, rpd, tpm, tpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local conc, reserve, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local m, d
if rpm > 0 or tpm > 0 then m = win_open(KEYS[1], tonumber(ARGV[9]), tonumber(ARGV[10])) end
if rpd > 0 or tpd > 0 then d = win_open(KEYS[2], tonumber(ARGV[11]), tonumber(ARGV[12])) end
local in_flight = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', NOW)
  in_flight = redis.call('ZCARD', KEYS[3])
end

local metric, retry = 0, 0
local function deny(code, wait)
  if metric == 0 or wait > retry then metric, retry = code, wait end
end
local function need(limit)
  local n = math.min(reserve, limit)
  if n < 1 then n = 1 end
  return n
end
if rpm > 0 and m.r + 1 > rpm then deny(1, win_wait(m, 'r', m.r + 1 - rpm)) end
if rpd > 0 and d.r + 1 > rpd then deny(2, win_wait(d, 'r', d.r + 1 - rpd)) end
if tpm > 0 and m.t + need(tpm) > tpm then deny(3, win_wait(m, 't', m.t + need(tpm) - tpm)) end
if tpd > 0 and d.t + need(tpd) > tpd then deny(4, win_wait(d, 't', d.t + need(tpd) - tpd)) end
if conc > 0 and in_flight + 1 > conc then deny(5, 1000) end

if metric == 0 then
  if m then win_add(m, 1, reserve) end
  if d then win_add(d, 1, reserve) end
  if conc > 0 then
    redis.call('ZADD', KEYS[3], NOW + lease_ms, ARGV[7])
    keep(KEYS[3], 2 * lease_ms)
    in_flight = in_flight + 1
  end
end

local function v(w, f)
  if w then return w[f] end
  return 0
end
return {metric == 0 and 1 or 0, metric, retry, v(m, 'cur'), v(d, 'cur'),
        v(m, 'r'), v(d, 'r'), v(m, 't'), v(d, 't'),
        m and win_reset(m) or 0, d and win_reset(d) or 0, in_flight}
