-- Replace a counter's value by a recount from ClickHouse.
-- KEYS[1]: counter hash.
-- ARGV[1]: value field; ARGV[2]: recounted value; ARGV[3]: expire at (ms, 0 = never);
-- then pairs: partition, highest offset the recount covers (-1: none).
-- The recount covers every stored row up to those offsets. If the counter already applied a
-- later offset of some partition (a batch stored after the recount's query), the recount is
-- stale: nothing changes and -1 is returned, so the caller queries again. Otherwise the value
-- and offsets are replaced, `init` is set and 1 is returned. Reservations (`r:*`, `R`),
-- alert marks (`a:*`) and payments (`p:*`) are kept.
local snap = {}
for i = 4, #ARGV, 2 do
  snap['o:' .. ARGV[i]] = tonumber(ARGV[i + 1])
end
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, 1, 2) == 'o:' then
    if tonumber(h[i + 1]) > (snap[f] or -1) then return -1 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'init', '1')
for f, o in pairs(snap) do
  if o >= 0 then redis.call('HSET', KEYS[1], f, int(o)) end
end
local exp = tonumber(ARGV[3])
if exp > 0 then redis.call('PEXPIREAT', KEYS[1], exp) end
return 1
