-- unique: the janitor's sweep of unique keys (streamq/unique.py).
-- A unique key of mode 'key' or 'debounce' has no TTL while its job lives
-- (enqueue.lua); once the job is final, the key is held only for its window
-- after the job finished ('unique_ms' in the job hash), then freed. This gives
-- each such key the PEXPIRE it has left, or deletes it when the job hash is
-- gone or names another key. A key that already has a TTL (throttle) is left
-- alone, and so is one that names another job than the caller read (it was
-- taken over since): the next sweep sees it again.
--
-- KEYS per pair: unique key, job hash of the job id the caller read from it
-- ARGV[1..] per pair: that job id
-- reply: how many keys were given a TTL or deleted
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local released = 0
for i = 1, #KEYS / 2 do
  local key, job = KEYS[2 * i - 1], KEYS[2 * i]
  local ok, holder = pcall(redis.call, 'GET', key)
  if ok and holder == ARGV[i] and redis.call('PTTL', key) == -1 then
    local read, h = pcall(redis.call, 'HMGET', job, 'status', 'finished_ms', 'unique', 'unique_ms')
    if not read then h = {} end
    if not h[1] or h[3] ~= key then
      redis.call('DEL', key)
      released = released + 1
    elseif FINAL[h[1]] then
      local left = tonumber(h[2] or '0') + tonumber(h[4] or '0') - now
      if left > 0 then
        redis.call('PEXPIRE', key, left)
      else
        redis.call('DEL', key)
      end
      released = released + 1
    end
  end
end
return released
