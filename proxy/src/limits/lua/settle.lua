
-- After a request (or to refund one another entity refused): correct its counts, drop its lease.
-- KEYS: minute hash, day hash, lease set.
-- ARGV: minute bucket ('' = window unused), day bucket ('' = unused), request delta,
--       token delta, lease id ('' = none), minute bucket ms, minute buckets, day bucket ms,
--       day buckets.
local dr, dt = tonumber(ARGV[3]), tonumber(ARGV[4])
if dr ~= 0 or dt ~= 0 then
  if ARGV[1] ~= '' then
    win_adjust(win_open(KEYS[1], tonumber(ARGV[6]), tonumber(ARGV[7])), tonumber(ARGV[1]), dr, dt)
  end
  if ARGV[2] ~= '' then
    win_adjust(win_open(KEYS[2], tonumber(ARGV[8]), tonumber(ARGV[9])), tonumber(ARGV[2]), dr, dt)
  end
end
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
end
return 1
