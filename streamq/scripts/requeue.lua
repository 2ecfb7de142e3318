-- requeue: move one DLQ entry back to its priority stream as a fresh first
-- attempt, atomically removing it from the DLQ (no window where it is in both
-- or in neither). The job hash is queued again with its TTL removed (it is no
-- longer final), or written anew if it had expired.
-- Only a hash that belongs to this dead job may be reset: one whose dlq_id is
-- this entry. A job id can be reused once the dead job's hash expired; the
-- hash then belongs to a newer job (queued, running or done), which a requeue
-- must not set back to queued and run again: refused.
-- The hash keeps its event index ('ev:*' fields) and adds the 'requeued' event,
-- which names the new message ('msg') and the DLQ entry it came from.
--
-- KEYS[1] dlq stream   KEYS[2] target stream   KEYS[3] job hash   KEYS[4] events stream
-- ARGV[1] dlq entry id   ARGV[2] group   ARGV[3] now ms
-- ARGV[4] priority (of the target stream)
-- reply: the new stream id; 0 when the DLQ entry is gone (already requeued); or
--   {reason code, message} when it is refused, before any write: 'no-job-id',
--   'too-large' (more fields than unpack() can pass to XADD), 'job-id-reused'
local MAX_VALUES = 2000
-- The events key's type first (the others fail, if at all, before any write).
local events_key = KEYS[4]
local found = redis.call('TYPE', events_key)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. events_key .. ' holds a ' .. found .. ', not a stream')
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return 0 end
local fields, job, task = {}, '', ''
local src = entry[2]
if #src > MAX_VALUES then
  return {'too-large', 'the DLQ entry has ' .. (#src / 2) .. ' fields, too many fields to '
    .. 'requeue (the limit is ' .. (MAX_VALUES / 2) .. ')'}
end
for f = 1, #src - 1, 2 do
  local name, value = src[f], src[f + 1]
  -- dlq_* is the DLQ's own metadata; bounces counted hand-backs of the dead run.
  if string.sub(name, 1, 4) ~= 'dlq_' and name ~= 'bounces' then
    if name == 'attempt' then value = '1' end
    if name == 'id' then job = value end
    if name == 'task' then task = value end
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
end
if job == '' then return {'no-job-id', 'the DLQ entry has no job id to requeue'} end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('HGET', KEYS[3], 'dlq_id') ~= ARGV[1] then
  local status = redis.call('HGET', KEYS[3], 'status') or 'unknown'
  return {'job-id-reused', 'job ' .. job .. ' is a newer job with the same id (status '
    .. status .. '), not the one that died in this entry; requeueing would reset it. '
    .. 'Enqueue a new job instead, or purge this entry'}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
end
local msg_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
local event_id = redis.call('XADD', KEYS[4], '*', 'kind', 'requeued', 'job', job,
  'task', task, 'msg', msg_id, 'from_dlq', ARGV[1], 'ts', ARGV[3])
redis.call('HDEL', KEYS[3], 'result', 'error_type', 'error', 'traceback', 'outcome_msg',
  'finished_ms', 'dlq_id', 'due_ms', 'started_ms', 'worker', 'duration_ms',
  'progress', 'progress_msg', 'progress_ms')
redis.call('HSET', KEYS[3], 'status', 'queued', 'task', task, 'priority', ARGV[4],
  'attempts', '0', 'msg_id', msg_id, 'enqueued_ms', ARGV[3],
  string.format('ev:%s', event_id), 'requeued')
redis.call('PERSIST', KEYS[3])
return msg_id
