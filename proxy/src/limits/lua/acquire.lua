-- Pre-check of one or more entities (API key, model): each entity's request is counted only
-- when every limit of that entity passes (the caller refunds the others if one refuses).
-- On a single Redis all of a request's entities go in one call; on a cluster one call per
-- entity (its keys share one hash tag: one slot).
-- KEYS: per entity i (0-based) at 3i+1..3i+3: minute hash, day hash, lease set.
-- ARGV[1..6]: lease id, lease ms, minute bucket ms, minute buckets, day bucket ms, day buckets.
-- ARGV per entity i at 6i+7..6i+12: rpm, rpd, tpm, tpd, concurrency (0 = no limit), reserved
--       tokens.
-- Returns 12 values per entity: admitted, metric (1 rpm, 2 rpd, 3 tpm, 4 tpd, 5 concurrency),
--          retry ms, minute bucket, day bucket, minute requests, day requests, minute tokens,
--          day tokens, minute reset ms, day reset ms, in flight.
local lease_id, lease_ms = ARGV[1], tonumber(ARGV[2])
local mw, mn, dw, dn = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}

local function v(w, f)
  if w then return w[f] end
  return 0
end

for i = 0, #KEYS / 3 - 1 do
  local kmin, kday, klease = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local a = 6 * i + 6
  local rpm, rpd = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tpm, tpd = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local conc, reserve = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local m, d
  if rpm > 0 or tpm > 0 then m = win_open(kmin, mw, mn) end
  if rpd > 0 or tpd > 0 then d = win_open(kday, dw, dn) end
  local in_flight = 0
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', klease, '-inf', NOW)
    in_flight = redis.call('ZCARD', klease)
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
      redis.call('ZADD', klease, NOW + lease_ms, lease_id)
      keep(klease, 2 * lease_ms)
      in_flight = in_flight + 1
    end
  end

  local row = {metric == 0 and 1 or 0, metric, retry, v(m, 'cur'), v(d, 'cur'),
               v(m, 'r'), v(d, 'r'), v(m, 't'), v(d, 't'),
               m and win_reset(m) or 0, d and win_reset(d) or 0, in_flight}
  for j = 1, 12 do out[12 * i + j] = row[j] end
end
return out
