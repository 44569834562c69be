
-- Extend the leases this proxy still holds (never re-creates a released or expired one).
-- KEYS[1]: lease set. ARGV[1]: lease ms, ARGV[2..]: lease ids. Returns how many were extended.
local ms = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', NOW + ms, ARGV[i])
end
if n > 0 then keep(KEYS[1], 2 * ms) end
return n
