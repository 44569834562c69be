-- Pre-check of entities (API key, model), in order: each entity's request is counted only
-- when every limit of that entity passes (the caller refunds the others if one refuses).
-- One call may carry the entities of many requests (the proxy batches the requests that wait
-- while a call is in flight): entities are checked one after the other, as separate calls
-- would check them, but each window and lease set is read once and written once per call.
-- On a single Redis a batch of requests goes in one call; on a cluster one call per entity
-- (its keys share one hash tag: one slot).
-- An admitted entity may also ask for a quota slice (proxy/src/limits/slices.rs): extra
-- requests, tokens and concurrency slots, granted up to 1/share of what is left of each limit
-- and counted at once, in the current buckets, like requests.
-- KEYS: per entity i (0-based) at 3i+1..3i+3: minute hash, day hash, lease set.
-- ARGV[1..6]: lease ms, minute bucket ms, minute buckets, day bucket ms, day buckets, share.
-- ARGV per entity i at 11i+7..11i+17: lease id ('' = none), rpm, rpd, tpm, tpd, concurrency
--       (0 = no limit), reserved tokens, wanted extra requests, tokens, slots (slot members
--       are named <lease id>.<1..n>), and 1 to check and count a request, 0 for a refill that
--       only asks for a slice (nothing is checked and the lease id is not added).
-- Returns one string of comma-separated integers (cheaper for the client to read than an
-- array of integers), 16 per entity: admitted, metric (1 rpm, 2 rpd, 3 tpm, 4 tpd,
-- 5 concurrency), retry ms, minute bucket, day bucket, minute requests, day requests, minute
-- tokens, day tokens, minute reset ms, day reset ms, in flight, granted requests, granted
-- tokens, granted slots, ms left in the bucket the grant was counted in.
local lease_ms = tonumber(ARGV[1])
local mw, mn, dw, dn = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local share = tonumber(ARGV[6])

-- At most 1/share of what is left of a limit (0 = no limit: g itself).
local function cap(g, limit, used)
  if limit > 0 then g = math.min(g, math.floor((limit - used) / share)) end
  return math.max(g, 0)
end
local out = {}

-- Windows and lease sets touched by this call, by key.
local wins, sets, win_order, set_order = {}, {}, {}, {}

local function window(key, width, n)
  local w = wins[key]
  if not w then
    w = win_open(key, width, n)
    wins[key] = w
    win_order[#win_order + 1] = w
  end
  return w
end

-- A lease set with its expired leases dropped; new leases are added at the end.
local function lease_set(key)
  local s = sets[key]
  if not s then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', NOW)
    s = {key = key, n = redis.call('ZCARD', key), add = {}}
    sets[key] = s
    set_order[#set_order + 1] = s
  end
  return s
end

local function v(w, f)
  if w then return w[f] end
  return 0
end

for i = 0, #KEYS / 3 - 1 do
  local kmin, kday, klease = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local a = 11 * i + 6
  local lease_id = ARGV[a + 1]
  local rpm, rpd = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tpm, tpd = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local conc, reserve = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local want_r, want_t, want_c = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9]), tonumber(ARGV[a + 10])
  local request = ARGV[a + 11] == '1'
  local m, d, s
  if rpm > 0 or tpm > 0 then m = window(kmin, mw, mn) end
  if rpd > 0 or tpd > 0 then d = window(kday, dw, dn) end
  local in_flight = 0
  if conc > 0 then
    s = lease_set(klease)
    in_flight = s.n
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
  if request then
    if rpm > 0 and m.r + 1 > rpm then deny(1, win_wait(m, 'r', m.r + 1 - rpm)) end
    if rpd > 0 and d.r + 1 > rpd then deny(2, win_wait(d, 'r', d.r + 1 - rpd)) end
    if tpm > 0 and m.t + need(tpm) > tpm then deny(3, win_wait(m, 't', m.t + need(tpm) - tpm)) end
    if tpd > 0 and d.t + need(tpd) > tpd then deny(4, win_wait(d, 't', d.t + need(tpd) - tpd)) end
    if conc > 0 and in_flight + 1 > conc then deny(5, 1000) end
  end

  local gr, gt, gc, valid = 0, 0, 0, 0
  if metric == 0 then
    if request then
      if m then win_count(m, 1, reserve) end
      if d then win_count(d, 1, reserve) end
      if s then
        s.n = s.n + 1
        s.add[#s.add + 1] = NOW + lease_ms
        s.add[#s.add + 1] = lease_id
        in_flight = s.n
      end
    end
    if want_r > 0 or want_t > 0 then
      -- A slice: at most 1/share of what is left of each limit, counted now. Requests
      -- without tokens (where tokens are limited) and tokens without the requests asked
      -- for would admit nothing; tokens alone (none asked for) top up a slice whose
      -- requests last longer.
      local tokens_limited = tpm > 0 or tpd > 0
      gr = cap(cap(want_r, rpm, v(m, 'r')), rpd, v(d, 'r'))
      gt = cap(cap(want_t, tpm, v(m, 't')), tpd, v(d, 't'))
      if tokens_limited and gt == 0 then gr = 0 end
      if not tokens_limited or (want_r > 0 and gr == 0) then gt = 0 end
      if gr > 0 or gt > 0 then
        if m then win_count(m, gr, gt) end
        if d then win_count(d, gr, gt) end
        if m then valid = (m.cur + 1) * mw - NOW elseif d then valid = (d.cur + 1) * dw - NOW
        else valid = 1000 end
      else
        gr, gt = 0, 0
      end
    end
    if s and want_c > 0 and lease_id ~= '' then
      -- Concurrency slots: at most 1/share of the free ones.
      gc = cap(want_c, conc, s.n)
      for j = 1, gc do
        s.add[#s.add + 1] = NOW + lease_ms
        s.add[#s.add + 1] = lease_id .. '.' .. j
      end
      s.n = s.n + gc
      in_flight = s.n
    end
  end

  out[i + 1] = string.format('%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d',
    metric == 0 and 1 or 0, metric, retry, v(m, 'cur'), v(d, 'cur'),
    v(m, 'r'), v(d, 'r'), v(m, 't'), v(d, 't'),
    m and win_reset(m) or 0, d and win_reset(d) or 0, in_flight, gr, gt, gc, valid)
end

for _, w in ipairs(win_order) do win_flush(w) end
for _, s in ipairs(set_order) do
  if #s.add > 0 then
    redis.call('ZADD', s.key, unpack(s.add))
    keep(s.key, 2 * lease_ms)
  end
end
return table.concat(out, ',')
