#!lua flags=allow-oom
-- release: give up a leader lease, only if this token still holds it.
--
-- KEYS[1] lock key
-- ARGV[1] token
-- reply: 1 = released, 0 = not held by this token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
