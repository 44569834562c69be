-- Replace an account's debited usage by a recount from ClickHouse and merge the ledger's
-- payments.
-- KEYS[1]: the account's credit hash.
-- ARGV[1]: recounted usage (nano-USD); ARGV[2]: the credit account's start (ms) the recount
-- used; ARGV[3]: n payments; then n pairs payment id, amount; then pairs partition, highest
-- offset the recount covers.
-- Stale recount (a later offset already applied): -1, nothing changes. Else `used`, `since`
-- and the offsets are replaced, missing payments added, `topup` set to the sum of all
-- payments, 1.
local n = tonumber(ARGV[3])
local first_offset = 4 + 2 * n
local snap = {}
for i = first_offset, #ARGV, 2 do
  snap['o:' .. ARGV[i]] = tonumber(ARGV[i + 1])
end
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, 1, 2) == 'o:' then
    if tonumber(h[i + 1]) > (snap[f] or -1) then return -1 end
  end
end
for i = 4, first_offset - 1, 2 do
  redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[i], ARGV[i + 1])
end
local total = 0
h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 'p:' then total = total + tonumber(h[i + 1]) end
end
redis.call('HSET', KEYS[1], 'used', ARGV[1], 'topup', int(total), 'init', '1', 'since', ARGV[2])
for f, o in pairs(snap) do
  if o >= 0 then redis.call('HSET', KEYS[1], f, int(o)) end
end
return 1
