-- Sliding window over a Redis hash; mirrors proxy/src/limits/window.rs (read that first).
-- Fields: r<b> / t<b> requests and tokens of bucket b, R / T totals, o oldest stored bucket.
-- Every write happens after win_open at the same time, so stored buckets lie in [o, o + n].
if redis.replicate_commands then redis.replicate_commands() end
local TIME = redis.call('TIME')
local NOW = tonumber(TIME[1]) * 1000 + math.floor(tonumber(TIME[2]) / 1000)

-- Load a window, dropping buckets that left it (each bucket is walked once: amortized O(1)).
-- One HMGET also reads the current bucket, so that win_add writes with a single HSET.
local function win_open(key, width, n)
  local cur = math.floor(NOW / width)
  local w = {key = key, width = width, n = n, cur = cur, r = 0, t = 0, cr = 0, ct = 0, new = true}
  local first = cur - n
  local h = redis.call('HMGET', key, 'o', 'R', 'T', 'r' .. cur, 't' .. cur)
  local o = tonumber(h[1])
  if o == nil then
    return w
  end
  if o + n < first then
    redis.call('DEL', key)
    return w
  end
  local r, t = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if h[4] then
    w.cr, w.ct, w.new = tonumber(h[4]) or 0, tonumber(h[5]) or 0, false
  end
  if o < first then
    -- Only after a drop can the oldest stored bucket be missing: walk to the next one.
    while o < first do
      local b = redis.call('HMGET', key, 'r' .. o, 't' .. o)
      if b[1] then
        r = r - (tonumber(b[1]) or 0)
        t = t - (tonumber(b[2]) or 0)
        redis.call('HDEL', key, 'r' .. o, 't' .. o)
      end
      o = o + 1
    end
    while o <= cur and redis.call('HEXISTS', key, 'r' .. o) == 0 do
      o = o + 1
    end
    if o > cur then
      redis.call('DEL', key)
      w.cr, w.ct, w.new = 0, 0, true
      return w
    end
    redis.call('HSET', key, 'o', o, 'R', r, 'T', t)
  end
  w.o, w.r, w.t = o, r, t
  return w
end

-- Time until the oldest counted usage leaves the window, ms.
local function win_reset(w)
  if w.o == nil then return 0 end
  return math.max(0, (w.o + w.n + 1) * w.width - NOW)
end

-- Time until `excess` of field `f` ('r' or 't') has left the window, ms.
local function win_wait(w, f, excess)
  if w.o ~= nil then
    local freed = 0
    for b = w.o, w.cur do
      -- The current bucket may hold counts not yet written (win_count): read it from w.
      local used
      if b == w.cur then
        used = (f == 'r') and w.cr or w.ct
      else
        used = tonumber(redis.call('HGET', w.key, f .. b)) or 0
      end
      freed = freed + used
      if freed >= excess then
        return math.max(0, (b + w.n + 1) * w.width - NOW)
      end
    end
  end
  return math.max(0, (w.cur + w.n + 1) * w.width - NOW)
end

-- Count requests r and tokens t in the current bucket, in w only: win_flush writes them, so
-- that many counts on one window (a batch of requests) cost a single HSET.
local function win_count(w, r, t)
  local cur = w.cur
  w.cr, w.ct, w.r, w.t = w.cr + r, w.ct + t, w.r + r, w.t + t
  if w.o == nil or w.o > cur then
    w.o, w.set_o = cur, true
  end
  w.dirty = true
end

-- Write what win_count counted (one HSET; the expiry is set when the bucket is created:
-- (n + 2) buckets from then outlast the bucket's stay in the window).
local function win_flush(w)
  if not w.dirty then return end
  local key, cur = w.key, w.cur
  if w.set_o then
    redis.call('HSET', key, 'r' .. cur, w.cr, 't' .. cur, w.ct, 'R', w.r, 'T', w.t, 'o', cur)
  else
    redis.call('HSET', key, 'r' .. cur, w.cr, 't' .. cur, w.ct, 'R', w.r, 'T', w.t)
  end
  w.dirty, w.set_o = false, false
  if w.new then
    w.new = false
    redis.call('PEXPIRE', key, (w.n + 2) * w.width)
  end
end

-- Count and write at once.
local function win_add(w, r, t)
  win_count(w, r, t)
  win_flush(w)
end

-- Correct bucket b of the window at `key` (never below zero). A bucket still in the window is
-- corrected in place (stale buckets before it are dropped by the next win_open, with their
-- corrected counts); if b already left the window, extra tokens count now.
local function win_adjust(key, width, n, b, dr, dt)
  if b >= math.floor(NOW / width) - n then
    local v = redis.call('HMGET', key, 'r' .. b, 't' .. b, 'R', 'T')
    if v[1] then
      local r, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
      if dr < -r then dr = -r end
      if dt < -t then dt = -t end
      local total_r, total_t = tonumber(v[3]) or 0, tonumber(v[4]) or 0
      if dr ~= 0 then
        redis.call('HSET', key, 'r' .. b, r + dr, 't' .. b, t + dt, 'R', total_r + dr, 'T', total_t + dt)
      elseif dt ~= 0 then
        redis.call('HSET', key, 't' .. b, t + dt, 'T', total_t + dt)
      end
      return
    end
  end
  if dt > 0 then
    win_add(win_open(key, width, n), 0, dt)
  end
end

-- Keep a lease set alive at least `ms` from now.
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
