#!lua flags=allow-oom
-- slot_release: a handler ended; give its slots back and wake one job parked
-- on each semaphore (defer.lua parks a job it deferred for a full zset). The
-- woken job's delayed entry becomes due now, so the janitor's next promote
-- runs it, instead of it sleeping out its backoff while a slot is free.
-- A parked member no longer in the delayed set (promoted by its own due time
-- meanwhile) is dropped and the next one tried, a few at most. Each wake is a
-- 'woken' event; it is not indexed in the job hash, whose key this script
-- cannot be given in advance (the hash indexes the job's 'limited' and
-- 'promoted' events around it). Repeating the call changes nothing more than
-- waking one more job early, which only costs it a fetch.
--
-- KEYS[1] events stream   KEYS[2] delayed zset   KEYS[3..2+n] slot zsets
-- KEYS[3+n..2+2n] their parking zsets
-- ARGV[1] holder   ARGV[2] n
-- reply: number of jobs woken
local n = tonumber(ARGV[2])
local want = {[1] = 'stream', [2] = 'zset'}
for i, key in ipairs(KEYS) do
  local found = redis.call('TYPE', key)['ok']
  local expected = want[i] or 'zset'
  if found ~= 'none' and found ~= expected then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a '
      .. expected)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local woken = 0
for i = 1, n do
  redis.call('ZREM', KEYS[2 + i], ARGV[1])
  local parked = KEYS[2 + n + i]
  for _ = 1, 8 do
    local popped = redis.call('ZPOPMIN', parked)
    local member = popped[1]
    if not member then break end
    if redis.call('ZSCORE', KEYS[2], member) then
      redis.call('ZADD', KEYS[2], 'XX', now, member)
      local ok, entry = pcall(cjson.decode, member)
      local job, task = '', ''
      if ok and type(entry) == 'table' then
        for f = 2, #entry - 1, 2 do
          if entry[f] == 'id' and type(entry[f + 1]) == 'string' then job = entry[f + 1] end
          if entry[f] == 'task' and type(entry[f + 1]) == 'string' then task = entry[f + 1] end
        end
      end
      redis.call('XADD', KEYS[1], '*', 'kind', 'woken', 'job', job, 'task', task,
        'slots', KEYS[2 + i], 'ts', now)
      woken = woken + 1
      break
    end
  end
end
return woken
