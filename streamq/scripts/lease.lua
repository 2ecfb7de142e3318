#!lua flags=allow-oom
-- lease: take or extend a leader lease for singleton janitor duties.
-- Free → take it; held by this token → extend it; held by another → refuse.
--
-- KEYS[1] lock key
-- ARGV[1] token   ARGV[2] ttl ms
-- reply: 1 = held by this token now, 0 = held by another
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
