-- Sliding window over a Redis hash; mirrors proxy/src/limits/window.rs (read that first).
-- Fields: r<b> / t<b> requests and tokens of bucket b, R / T totals, o oldest stored bucket.
-- Every write happens after win_open at the same time, so stored buckets lie in [o, o + n].
if redis.replicate_commands then redis.replicate_commands() end
local TIME = redis.call('TIME')
local NOW = tonumber(TIME[1]) * 1000 + math.floor(tonumber(TIME[2]) / 1000)

-- Load a window, dropping buckets that left it (each bucket is walked once: amortized O(1)).
local function win_open(key, width, n)
  local w = {key = key, width = width, n = n, cur = math.floor(NOW / width), r = 0, t = 0}
  local first = w.cur - n
  local h = redis.call('HMGET', key, 'o', 'R', 'T')
  local o = tonumber(h[1])
  if o == nil then
    return w
  end
  if o + n < first then
    redis.call('DEL', key)
    return w
  end
  local r, t, start = tonumber(h[2]) or 0, tonumber(h[3]) or 0, o
  while o < first do
    local b = redis.call('HMGET', key, 'r' .. o, 't' .. o)
    if b[1] then
      r = r - (tonumber(b[1]) or 0)
      t = t - (tonumber(b[2]) or 0)
      redis.call('HDEL', key, 'r' .. o, 't' .. o)
    end
    o = o + 1
  end
  while o <= w.cur and redis.call('HEXISTS', key, 'r' .. o) == 0 do
    o = o + 1
  end
  if o > w.cur then
    redis.call('DEL', key)
    return w
  end
  if o ~= start then
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
      freed = freed + (tonumber(redis.call('HGET', w.key, f .. b)) or 0)
      if freed >= excess then
        return math.max(0, (b + w.n + 1) * w.width - NOW)
      end
    end
  end
  return math.max(0, (w.cur + w.n + 1) * w.width - NOW)
end

-- Count requests r and tokens t in the current bucket.
local function win_add(w, r, t)
  local key, cur = w.key, w.cur
  redis.call('HINCRBY', key, 'r' .. cur, r)
  redis.call('HINCRBY', key, 't' .. cur, t)
  redis.call('HINCRBY', key, 'R', r)
  redis.call('HINCRBY', key, 'T', t)
  if w.o == nil or w.o > cur then
    redis.call('HSET', key, 'o', cur)
    w.o = cur
  end
  w.r, w.t = w.r + r, w.t + t
  redis.call('PEXPIRE', key, (w.n + 2) * w.width)
end

-- Correct bucket b (never below zero); if it left the window, extra tokens count now.
local function win_adjust(w, b, dr, dt)
  if redis.call('HEXISTS', w.key, 'r' .. b) == 1 then
    local v = redis.call('HMGET', w.key, 'r' .. b, 't' .. b)
    local r, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    if dr < -r then dr = -r end
    if dt < -t then dt = -t end
    redis.call('HINCRBY', w.key, 'r' .. b, dr)
    redis.call('HINCRBY', w.key, 't' .. b, dt)
    redis.call('HINCRBY', w.key, 'R', dr)
    redis.call('HINCRBY', w.key, 'T', dt)
  elseif dt > 0 then
    win_add(w, 0, dt)
  end
end

-- Keep a lease set alive at least `ms` from now.
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
