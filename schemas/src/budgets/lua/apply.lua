-- Add one stored batch of one partition to a counter, exactly once.
-- KEYS[1]: counter hash.
-- ARGV[1]: partition; ARGV[2]: value field (`v`, or `used` for credits);
-- ARGV[3]: expire at (Unix ms, 0 = never); ARGV[4]: '1' when items carry event ids;
-- then per item: offset, amount[, event id].
-- Items at or below the partition's last applied offset (field `o:<partition>`) were counted
-- before (a replayed batch) and are skipped. An item's event id drops the reservation the
-- proxy made for that request (`r:<event id>`), counted or not.
-- Returns {items applied, value after}.
local of = 'o:' .. ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[1], of) or '-1')
local step = 2
if ARGV[4] == '1' then step = 3 end
local sum, applied, top = 0, 0, last
for i = 5, #ARGV, step do
  local o = tonumber(ARGV[i])
  if step == 3 and ARGV[i + 2] ~= '' then
    local rf = 'r:' .. ARGV[i + 2]
    local r = redis.call('HGET', KEYS[1], rf)
    if r then
      local amt = tonumber(string.match(r, '^(-?%d+)')) or 0
      redis.call('HDEL', KEYS[1], rf)
      redis.call('HINCRBY', KEYS[1], 'R', int(-amt))
    end
  end
  if o > last then
    sum = sum + tonumber(ARGV[i + 1])
    applied = applied + 1
    if o > top then top = o end
  end
end
if applied > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], int(sum))
  redis.call('HSET', KEYS[1], of, int(top))
end
local exp = tonumber(ARGV[3])
if exp > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIREAT', KEYS[1], exp)
end
return {applied, redis.call('HGET', KEYS[1], ARGV[2]) or '0'}
