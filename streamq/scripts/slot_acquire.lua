#!lua flags=allow-oom
-- slot_acquire: take a slot of every given semaphore, or of none (a job may
-- need its task's slot and its key value's slot). A semaphore is a zset of
-- holders scored by their expiry (server TIME + ttl): expired holders (a
-- worker that crashed or stalled past the ttl) are dropped first, so a slot is
-- never held forever. A holder that already has its slot gets its expiry
-- pushed out instead: the same script renews held slots (the worker's keeper
-- calls it every third of the ttl) and makes a repeated call (redis-py retry)
-- harmless. Each zset lives twice the ttl past its last acquire.
--
-- KEYS[1..n] slot zsets
-- ARGV[1] holder   ARGV[2] ttl ms   ARGV[3..2+n] capacity of each zset
-- reply: 0 every slot taken (or renewed); i > 0 none taken, zset i is full
for i, key in ipairs(KEYS) do
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= 'zset' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a zset')
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, ARGV[1])
      and redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('PEXPIRE', key, 2 * ttl)
end
return 0
