-- After requests (or to refund what another entity refused): correct counts, drop leases.
-- Many corrections go in one call (a batch of finished requests, merged per entity and
-- bucket by the proxy; on a cluster, those of one slot).
-- KEYS: per correction i (0-based) at 3i+1..3i+3: minute hash, day hash, lease set.
-- ARGV[1..4]: minute bucket ms, minute buckets, day bucket ms, day buckets.
-- ARGV per correction i at 5i+5..5i+9: minute bucket ('' = window unused), day bucket
--       ('' = unused), request delta, token delta, lease ids (comma-separated, '' = none).
local mw, mn, dw, dn = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 0, #KEYS / 3 - 1 do
  local a = 5 * i + 4
  local dr, dt = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  if dr ~= 0 or dt ~= 0 then
    if ARGV[a + 1] ~= '' then
      win_adjust(KEYS[3 * i + 1], mw, mn, tonumber(ARGV[a + 1]), dr, dt)
    end
    if ARGV[a + 2] ~= '' then
      win_adjust(KEYS[3 * i + 2], dw, dn, tonumber(ARGV[a + 2]), dr, dt)
    end
  end
  if ARGV[a + 5] ~= '' then
    local ids = {}
    for id in string.gmatch(ARGV[a + 5], '[^,]+') do ids[#ids + 1] = id end
    redis.call('ZREM', KEYS[3 * i + 3], unpack(ids))
  end
end
return 1
