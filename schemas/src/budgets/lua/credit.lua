-- Credits of one account: usage debits, top-ups and the block at zero, atomically.
-- KEYS[1]: the account's credit hash (`used`, `topup`, `o:<partition>`, `p:<payment id>`);
-- KEYS[2]: the account's decision hash (same hash tag).
-- ARGV[1]: op: 'apply' | 'topup' | 'eval'; ARGV[2]: '1' if the account blocks at zero;
-- ARGV[3]: block decision JSON; ARGV[4]: notice channel; ARGV[5]: notice;
-- apply: ARGV[6] partition, then pairs offset, amount (skipped at or below `o:<partition>`);
-- topup: ARGV[6] payment id, ARGV[7] amount (nano-USD; applied once per payment id).
-- After the op the block field `credits` is set when the balance (topup - used) is at or
-- below zero and the account blocks, and cleared otherwise.
-- Returns {applied (items, or 1/0 for a top-up), topup, used, decision changed}.
local applied = 0
local op = ARGV[1]
if op == 'apply' then
  local of = 'o:' .. ARGV[6]
  local last = tonumber(redis.call('HGET', KEYS[1], of) or '-1')
  local sum, top = 0, last
  for i = 7, #ARGV, 2 do
    local o = tonumber(ARGV[i])
    if o > last then
      sum = sum + tonumber(ARGV[i + 1])
      applied = applied + 1
      if o > top then top = o end
    end
  end
  if applied > 0 then
    redis.call('HINCRBY', KEYS[1], 'used', int(sum))
    redis.call('HSET', KEYS[1], of, int(top))
  end
elseif op == 'topup' then
  if redis.call('HSETNX', KEYS[1], 'p:' .. ARGV[6], ARGV[7]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'topup', ARGV[7])
    applied = 1
  end
elseif op ~= 'eval' then
  return redis.error_reply('unknown op')
end
local topup = redis.call('HGET', KEYS[1], 'topup') or '0'
local used = redis.call('HGET', KEYS[1], 'used') or '0'
local value = ''
if ARGV[2] == '1' and num(topup) - num(used) <= 0 then value = ARGV[3] end
local changed = decide(KEYS[2], 'credits', value, 0, ARGV[4], ARGV[5])
return {applied, topup, used, changed}
