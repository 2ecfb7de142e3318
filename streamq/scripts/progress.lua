#!lua flags=allow-oom
-- progress: record a running job's progress in its hash and as an event.
-- Fenced like an outcome (DESIGN.md invariant 3): only while the message is
-- still pending to this consumer with the delivery count the worker was given,
-- so a stale worker (paused, then reclaimed from) cannot write its progress
-- over the new run's; and only while the job hash says running, so a late
-- report cannot write over a finished job. The hash indexes the event
-- ('ev:<event id>' = 'progress'): one field per report while the job lives.
--
-- KEYS[1] job hash   KEYS[2] events stream   KEYS[3] the message's stream (optional:
-- without it only the status is checked)
-- ARGV[1] percent   ARGV[2] message   ARGV[3] now ms   ARGV[4] job id   ARGV[5] task
-- ARGV[6] attempt   ARGV[7] worker (consumer)
-- ARGV[8] group   ARGV[9] message id   ARGV[10] delivery count
-- reply: 1 recorded, 0 the job is not running or the message is no longer this delivery's
local events_key = KEYS[2]
local found = redis.call('TYPE', events_key)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. events_key .. ' holds a ' .. found .. ', not a stream')
end
if KEYS[3] then
  local entry = redis.call('XPENDING', KEYS[3], ARGV[8], ARGV[9], ARGV[9], 1)[1]
  if not (entry and entry[2] == ARGV[7] and tonumber(entry[4]) == tonumber(ARGV[10])) then
    return 0
  end
end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local event_id = redis.call('XADD', KEYS[2], '*', 'kind', 'progress', 'job', ARGV[4],
  'task', ARGV[5], 'attempt', ARGV[6], 'worker', ARGV[7], 'progress', ARGV[1],
  'message', ARGV[2], 'ts', ARGV[3])
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_msg', ARGV[2], 'progress_ms', ARGV[3],
  string.format('ev:%s', event_id), 'progress')
return 1
