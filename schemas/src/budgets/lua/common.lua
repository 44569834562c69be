-- Shared helpers (prepended to every budget script).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(x)
  return string.format('%d', x)
end
local function num(x)
  return tonumber(x or '0') or 0
end
-- Set or clear one decision field; extends the hash's expiry to the latest window end
-- (0 = never expires). Publishes `notice` on `channel` when something changed.
local function decide(key, field, value, expire_at, channel, notice)
  local cur = redis.call('HGET', key, field)
  if value == '' then
    if not cur then return 0 end
    redis.call('HDEL', key, field)
  else
    if cur == value then return 0 end
    local ttl = redis.call('PTTL', key)
    redis.call('HSET', key, field, value)
    local exp = tonumber(expire_at)
    if exp == 0 then
      redis.call('PERSIST', key)
    elseif ttl == -2 then
      redis.call('PEXPIREAT', key, exp)
    elseif ttl >= 0 and now_ms() + ttl < exp then
      redis.call('PEXPIREAT', key, exp)
    end
  end
  redis.call('PUBLISH', channel, notice)
  return 1
end
