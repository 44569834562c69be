-- Settle a reservation with the request's actual amount (proxy, when the request ended).
-- KEYS[1]: counter hash. ARGV[1]: event id; ARGV[2]: actual amount; ARGV[3]: how long the
-- actual amount stays reserved (ms) until the aggregator counts the event and drops it.
-- A reservation the aggregator already dropped (it counted the event) stays dropped.
-- Returns 1 when a reservation was settled, 0 when there was none.
local f = 'r:' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], f)
if not cur then return 0 end
local amt = tonumber(string.match(cur, '^(-?%d+)')) or 0
local actual = tonumber(ARGV[2])
if actual <= 0 then
  redis.call('HDEL', KEYS[1], f)
  actual = 0
else
  redis.call('HSET', KEYS[1], f, int(actual) .. '|' .. int(now_ms() + tonumber(ARGV[3])))
end
redis.call('HINCRBY', KEYS[1], 'R', int(actual - amt))
return 1
