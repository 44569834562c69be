-- Reserve a request's worst-case amount on a budget counter (proxy, reservation mode).
-- KEYS[1]: counter hash (`v` spent, `R` reserved, `r:<event id>` = "amount|expiry ms").
-- ARGV[1]: event id; ARGV[2]: amount; ARGV[3]: limit; ARGV[4]: reservation lifetime (ms);
-- ARGV[5]: counter expiry (Unix ms, 0 = never).
-- Expired reservations are purged at most once a second. Admits when spent + reserved +
-- amount stays within the limit. Returns {1 | 0, spent, reserved}.
local now = now_ms()
if now >= num(redis.call('HGET', KEYS[1], 'px')) then
  local h = redis.call('HGETALL', KEYS[1])
  local total = 0
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, 2) == 'r:' then
      local amt, exp = string.match(h[i + 1], '^(-?%d+)|(%d+)$')
      if (tonumber(exp) or 0) <= now then
        redis.call('HDEL', KEYS[1], h[i])
      else
        total = total + (tonumber(amt) or 0)
      end
    end
  end
  redis.call('HSET', KEYS[1], 'R', int(total), 'px', int(now + 1000))
end
local v = num(redis.call('HGET', KEYS[1], 'v'))
local r = num(redis.call('HGET', KEYS[1], 'R'))
local amount = tonumber(ARGV[2])
if v + r + amount > tonumber(ARGV[3]) then
  return {0, int(v), int(r)}
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], int(amount) .. '|' .. int(now + tonumber(ARGV[4])))
redis.call('HINCRBY', KEYS[1], 'R', int(amount))
local exp = tonumber(ARGV[5])
if exp > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIREAT', KEYS[1], exp)
end
return {1, int(v), int(r + amount)}
